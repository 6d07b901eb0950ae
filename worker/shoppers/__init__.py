"""What pushrec knows of shoppers and items: input parsing, the event state, the catalog,
devices and preferences, the audit trail, erasure, and the one reader of a shopper's
state."""
