"""Readers of whole sharded key families for assertions (the keys name a shard each)."""

from __future__ import annotations

from worker.service.rebuild import interaction_rows
from worker.service.runtime import Runtime


def log_length(rt: Runtime) -> int:
    """Entries in the interaction log, every shard."""
    return sum(int(rt.redis.xlen(rt.keys.interaction_log(n))) for n in rt.keys.all_shards)


def log_entries(rt: Runtime) -> list[dict[str, str]]:
    """The interaction log's entries, oldest first, every shard."""
    return list(interaction_rows(rt.redis, rt.keys))


def delayed_sizes(rt: Runtime) -> tuple[int, int, int]:
    """(due, in flight, payloads) of the delayed jobs, every shard."""
    sizes = [0, 0, 0]
    for n in rt.keys.all_shards:
        k = rt.keys.delayed(n)
        sizes[0] += int(rt.redis.zcard(k.due))
        sizes[1] += int(rt.redis.zcard(k.inflight))
        sizes[2] += int(rt.redis.hlen(k.jobs))
    return sizes[0], sizes[1], sizes[2]
