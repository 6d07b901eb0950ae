"""Turning a due trigger into a queued message: trigger building, recommendation, the
firer, and the index the process serves."""
