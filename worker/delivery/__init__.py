"""Getting a queued message to the shopper's devices: the outbox ledger, the sender, and
the push library's configuration and shared Redis stores."""
