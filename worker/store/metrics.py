"""Counters and histograms kept in Redis, so every worker process (prefork children,
pool threads, other hosts) adds to the same figures and any process can report them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import redis

from worker.store.keys import Keys

# Upper bounds (seconds) of the gateway latency buckets: a local gateway answers in
# milliseconds, a real one in tens, a struggling one in seconds (read timeout 10 s).
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class Histogram:
    """One label's histogram: `buckets` are (upper bound, cumulative count), ending with
    +Inf, as Prometheus exposes them."""

    buckets: list[tuple[float, int]]
    count: int
    sum_s: float


def _bucket(seconds: float) -> str:
    for bound in LATENCY_BUCKETS_S:
        if seconds <= bound:
            return repr(bound)
    return "+Inf"


class Metrics:
    """Named integer counters in one Redis hash (`Keys.metrics`), and the gateway latency
    histograms in another (`Keys.gateway_latency`)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._client = client
        self._key = keys.metrics
        self._latency = keys.gateway_latency

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

    def observe_latency(
        self, observed: Iterable[tuple[str, float]], pipe: redis.client.Pipeline
    ) -> None:
        """Add (channel, seconds) observations, summed here so a batch costs a few
        commands, in `pipe` (the caller executes it). Sums are kept in whole
        microseconds: HINCRBY is exact where float sums drift."""
        fields: Counter[str] = Counter()
        for channel, seconds in observed:
            fields[f"{channel}:{_bucket(seconds)}"] += 1
            fields[f"{channel}:count"] += 1
            fields[f"{channel}:sum_us"] += round(seconds * 1e6)
        for name, value in fields.items():
            pipe.hincrby(self._latency, name, value)

    def latency(self) -> dict[str, Histogram]:
        """Per channel, its gateway latency histogram."""
        raw: dict[str, str] = self._client.hgetall(self._latency)  # type: ignore[assignment]
        channels = sorted({name.rpartition(":")[0] for name in raw})
        out: dict[str, Histogram] = {}
        for channel in channels:
            running = 0
            buckets: list[tuple[float, int]] = []
            for bound in (*(repr(b) for b in LATENCY_BUCKETS_S), "+Inf"):
                running += int(raw.get(f"{channel}:{bound}", 0))
                buckets.append((float(bound), running))
            out[channel] = Histogram(
                buckets=buckets,
                count=int(raw.get(f"{channel}:count", 0)),
                sum_s=int(raw.get(f"{channel}:sum_us", 0)) / 1e6,
            )
        return out
