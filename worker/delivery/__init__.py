"""Getting a queued message to the shopper's devices: the outbox ledger, the sender and the
settling of its results, and the push library's configuration and shared Redis stores."""
