"""When a shopper may be contacted: the rule kinds, the triggers and jobs they make, the
contact policy, quiet hours."""
