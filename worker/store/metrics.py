"""Counters kept in Redis so every worker process adds to the same figures."""

from __future__ import annotations

from collections.abc import Mapping

import redis

from worker.store.keys import Keys


class Metrics:
    """Named integer counters in one Redis hash (`Keys.metrics`)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._client = client
        self._key = keys.metrics

    def add(self, counts: Mapping[str, int], pipe: redis.client.Pipeline | None = None) -> None:
        """Add `counts`; inside `pipe` when given (the caller executes it)."""
        target = pipe if pipe is not None else self._client.pipeline(transaction=False)
        for name, value in counts.items():
            if value:
                target.hincrby(self._key, name, value)
        if pipe is None:
            target.execute()

    def snapshot(self) -> dict[str, int]:
        raw: dict[str, str] = self._client.hgetall(self._key)  # type: ignore[assignment]
        return {name: int(value) for name, value in sorted(raw.items())}
