"""worker: the pushrec application (Celery tasks, shopper state in Redis, rules, policy)."""
