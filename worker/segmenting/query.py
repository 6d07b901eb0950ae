"""Segment queries: a segment's shoppers, computed inside Redis shard by shard.

Each condition of a segment is a score range of one index of the shard (`ZRANGESTORE
… BYSCORE` into a scratch set), and the combinations are set operations between them
(`ZINTERSTORE` for the conditions and `all`, `ZUNIONSTORE` for `any`, `ZDIFFSTORE` for
`not`), all keys in the shard's slot, so the work stays in Redis (and runs on Redis
Cluster), and a query costs one round trip per shard whatever the segment. The result is
stored per shard in a sorted set the caller names (scores 0: ordered by id, so a cursor
over it is stable): a campaign run's audience, or a scratch set for `segment show`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping

from worker.segmenting.rfm import RfmCuts, compute_cuts, dimension_key, load_cuts
from worker.segments import Segment
from worker.store.client import StatePipeline, StateRedis
from worker.store.keys import Keys, SegmentKeys

_SCRATCH_TTL_S = 60
_DAY = 86_400


class SegmentQuery:
    """Evaluates the configured segments; RFM cuts are read at each query (computed and
    stored first when none are)."""

    def __init__(self, client: StateRedis, keys: Keys, segments: Mapping[str, Segment]) -> None:
        self._client = client
        self._keys = keys
        self._segments = segments

    def cuts(self, now: float) -> RfmCuts:
        return load_cuts(self._client, self._keys) or compute_cuts(self._client, self._keys, now)

    def store(
        self, name: str, now: float, dest: Callable[[SegmentKeys], str], ttl_s: int
    ) -> list[int]:
        """Store segment `name`'s shoppers of each shard in `dest(shard)` (expiring after
        `ttl_s`); returns the size per shard."""
        segment = self._segments[name]
        cuts = self.cuts(now) if self._uses_rfm(segment) else None
        sizes = []
        for shard in range(self._keys.shards):
            seg = self._keys.segment(shard)
            pipe = self._client.pipeline(transaction=True)  # a half-built set is never seen
            scratch: list[str] = []
            result = _Plan(pipe, seg, self._segments, cuts, now, scratch).build(segment)
            target = dest(seg)
            pipe.zinterstore(target, {result: 0})  # scores 0: a stable order by id
            pipe.expire(target, ttl_s)
            pipe.zcard(target)
            if scratch:
                pipe.delete(*scratch)
            replies = pipe.execute()
            sizes.append(int(replies[-2] if scratch else replies[-1]))
        return sizes

    def size_and_sample(self, name: str, now: float, sample: int) -> tuple[int, list[str]]:
        """How many shoppers segment `name` holds now, and up to `sample` of them."""
        tag = uuid.uuid4().hex[:12]
        sizes = self.store(name, now, lambda s: s.scratch(f"show:{tag}"), _SCRATCH_TTL_S)
        pipe = self._client.pipeline(transaction=False)
        for shard in range(self._keys.shards):
            key = self._keys.segment(shard).scratch(f"show:{tag}")
            pipe.zrange(key, 0, sample - 1)
            pipe.delete(key)
        replies = pipe.execute()
        members = sorted(m for rows in replies[::2] for m in rows)
        return sum(sizes), members[:sample]

    def _uses_rfm(self, segment: Segment) -> bool:
        return segment.rfm is not None or any(
            self._uses_rfm(self._segments[r]) for r in segment.references()
        )


class _Plan:
    """The commands computing one segment in one shard, queued into `pipe`."""

    def __init__(
        self,
        pipe: StatePipeline,
        seg: SegmentKeys,
        segments: Mapping[str, Segment],
        cuts: RfmCuts | None,
        now: float,
        scratch: list[str],
    ) -> None:
        self._pipe = pipe
        self._seg = seg
        self._segments = segments
        self._cuts = cuts
        self._now = now
        self._scratch = scratch

    def _new(self) -> str:
        key = self._seg.scratch(uuid.uuid4().hex[:16])
        self._scratch.append(key)
        return key

    def _range(self, source: str, minimum: str | float, maximum: str | float) -> str:
        key = self._new()
        self._pipe.zrangestore(key, source, minimum, maximum, byscore=True)
        self._pipe.expire(key, _SCRATCH_TTL_S)
        return key

    def _combine(self, how: str, parts: list[str]) -> str:
        if len(parts) == 1:
            return parts[0]
        key = self._new()
        if how == "inter":
            self._pipe.zinterstore(key, parts)
        else:
            self._pipe.zunionstore(key, parts)
        self._pipe.expire(key, _SCRATCH_TTL_S)
        return key

    def build(self, segment: Segment) -> str:
        """The scratch key that will hold `segment`'s shoppers of this shard."""
        seg, now = self._seg, self._now
        parts: list[str] = []
        if segment.rfm is not None:
            assert self._cuts is not None
            for dimension in ("r", "f", "m"):
                low, high = getattr(segment.rfm, dimension)
                minimum, maximum = self._cuts.bounds(dimension, low, high)
                parts.append(self._range(dimension_key(seg, dimension), minimum, maximum))
        if segment.dormant_days is not None:
            parts.append(self._range(seg.last_seen, "-inf", now - segment.dormant_days * _DAY))
        if segment.active_within_days is not None:
            since = now - segment.active_within_days * _DAY
            parts.append(self._range(seg.last_seen, since, "+inf"))
        if segment.min_orders is not None:
            parts.append(self._range(seg.orders, segment.min_orders, "+inf"))
        if segment.min_monetary is not None:
            parts.append(self._range(seg.monetary, segment.min_monetary, "+inf"))
        if segment.affinity is not None:
            key = seg.affinity(segment.affinity.category)
            parts.append(self._range(key, segment.affinity.min_share, "+inf"))
        if (cart := segment.cart_abandoned) is not None:
            since, until = now - cart.within_days * _DAY, now - cart.idle_hours * 3600
            parts.append(self._range(seg.cart, since, until))
        if segment.channel is not None:
            parts.append(self._range(seg.channel(segment.channel), "-inf", "+inf"))
        if segment.never_purchased:
            key = self._new()
            self._pipe.zdiffstore(key, [seg.seen, seg.orders])
            self._pipe.expire(key, _SCRATCH_TTL_S)
            parts.append(key)
        parts.extend(self.build(self._segments[name]) for name in segment.all_of)
        if segment.any_of:
            parts.append(
                self._combine("union", [self.build(self._segments[n]) for n in segment.any_of])
            )
        if not parts:  # only `not`: everyone indexed but them
            parts.append(self._range(seg.seen, "-inf", "+inf"))
        result = self._combine("inter", parts)
        if segment.none_of:
            excluded = self._combine(
                "union", [self.build(self._segments[n]) for n in segment.none_of]
            )
            key = self._new()
            self._pipe.zdiffstore(key, [result, excluded])
            self._pipe.expire(key, _SCRATCH_TTL_S)
            result = key
        return result
