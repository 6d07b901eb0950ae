"""Turning a due trigger into a queued message: trigger building, recommendation, the
firer (its reads, its writes, one job in flight), and the index the process serves."""
