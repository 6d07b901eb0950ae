"""Counters and histograms kept in Redis, so every worker process (prefork children,
pool threads, other hosts) adds to the same figures and any process can report them."""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from worker.store.client import StatePipeline, StateRedis
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
    """Named integer counters in Redis hashes (`Keys.metrics`), and the gateway latency
    histograms in others (`Keys.gateway_latency`). Each process adds to one shard of
    them, picked by its host and pid, so on a cluster the writers spread over the
    masters; a read sums every shard."""

    def __init__(self, client: StateRedis, keys: Keys) -> None:
        self._client = client
        self._keys = keys
        shard = keys.shard(f"{socket.gethostname()}:{os.getpid()}")
        self._key = keys.metrics(shard)
        self._latency = keys.gateway_latency(shard)

    def add(self, counts: Mapping[str, int], pipe: StatePipeline | None = None) -> None:
        """Add `counts`; inside `pipe` when given (the caller executes it)."""
        target = pipe if pipe is not None else self._client.pipeline(transaction=False)
        for name, value in counts.items():
            if value:
                target.hincrby(self._key, name, value)
        if pipe is None:
            target.execute()

    def _summed(self, key: Callable[[int], str]) -> Counter[str]:
        """Every shard of the hashes `key` names, summed field by field."""
        pipe = self._client.pipeline(transaction=False)
        for shard in self._keys.all_shards:
            pipe.hgetall(key(shard))
        total: Counter[str] = Counter()
        for raw in pipe.execute():
            total.update({name: int(value) for name, value in raw.items()})
        return total

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self._summed(self._keys.metrics).items()))

    def observe_latency(self, observed: Iterable[tuple[str, float]], pipe: StatePipeline) -> None:
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
        raw = self._summed(self._keys.gateway_latency)
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
