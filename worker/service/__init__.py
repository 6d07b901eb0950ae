"""The running service: the Celery app and tasks, the per-process runtime, ingest, the
scheduler, index rebuilds, and the user view."""
