"""RFM cut points: the quintiles of recency, frequency and monetary value over the
current buyers, computed from the segment indexes and stored in Redis.

A buyer's score in each dimension is 1-5: 1 for values at or below the first cut (the
20th percentile), 5 above the fourth (the 80th); 5 is the most recent last purchase,
the most orders, the most money spent. Ties at a cut go to the lower score, so where
many buyers share a value (one order) the lower scores are crowded and the upper ones
thin: the cuts say so (`pushrec segment show`).

A cut is the exact quantile across the shards: the smallest indexed value with at least
`floor(q * buyers)` (at least one) values at or below it, found by bisection on the
value with one pipelined ZCOUNT per shard and step (about 60 round trips a cut), never
by reading the sets.
The scheduler recomputes them every `rfm_refresh_s`; a segment query with none stored
computes them first.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Literal

from worker.store.client import StateRedis
from worker.store.keys import Keys, SegmentKeys

Dimension = Literal["r", "f", "m"]
QUANTILES = (0.2, 0.4, 0.6, 0.8)
_BISECTIONS = 60


def dimension_key(seg: SegmentKeys, dimension: Dimension) -> str:
    """The index a dimension is read from: recency is the last purchase's time."""
    return {"r": seg.last_purchase, "f": seg.orders, "m": seg.monetary}[dimension]


@dataclass(frozen=True)
class RfmCuts:
    computed_at: float
    buyers: int
    r: tuple[float, ...]  # four cuts each, ascending
    f: tuple[float, ...]
    m: tuple[float, ...]

    def cuts(self, dimension: Dimension) -> tuple[float, ...]:
        return {"r": self.r, "f": self.f, "m": self.m}[dimension]

    def bounds(self, dimension: Dimension, low: int, high: int) -> tuple[str, str]:
        """The ZRANGE BYSCORE (min, max) of scores `low`-`high` in `dimension`."""
        cuts = self.cuts(dimension)
        minimum = "-inf" if low == 1 or not cuts else f"({cuts[low - 2]!r}"
        maximum = "+inf" if high == 5 or not cuts else repr(cuts[high - 1])
        return minimum, maximum

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RfmCuts:
        raw = json.loads(text)
        return cls(
            computed_at=float(raw["computed_at"]),
            buyers=int(raw["buyers"]),
            r=tuple(raw["r"]),
            f=tuple(raw["f"]),
            m=tuple(raw["m"]),
        )


def compute_cuts(client: StateRedis, keys: Keys, now: float) -> RfmCuts:
    """The cut points over the buyers indexed now, stored for segment queries."""
    shards = [keys.segment(n) for n in range(keys.shards)]
    cuts = {d: _quantiles(client, [dimension_key(s, d) for s in shards]) for d in ("r", "f", "m")}
    pipe = client.pipeline(transaction=False)
    for s in shards:
        pipe.zcard(s.orders)
    buyers = sum(int(n) for n in pipe.execute())
    result = RfmCuts(now, buyers, cuts["r"], cuts["f"], cuts["m"])
    client.set(keys.rfm_cuts, result.to_json())
    return result


def load_cuts(client: StateRedis, keys: Keys) -> RfmCuts | None:
    raw: str | None = client.get(keys.rfm_cuts)  # type: ignore[assignment]
    return RfmCuts.from_json(raw) if raw else None


def _quantiles(client: StateRedis, sets: list[str]) -> tuple[float, ...]:
    """The values at `QUANTILES` over the union of sorted sets `sets` (() if empty)."""
    pipe = client.pipeline(transaction=False)
    for key in sets:
        pipe.zcard(key)
        pipe.zrange(key, 0, 0, withscores=True)
        pipe.zrange(key, -1, -1, withscores=True)
    replies = pipe.execute()
    total = sum(int(replies[i]) for i in range(0, len(replies), 3))
    if total == 0:
        return ()
    lows = [float(r[0][1]) for r in replies[1::3] if r]
    highs = [float(r[0][1]) for r in replies[2::3] if r]
    return tuple(
        _value_at_rank(client, sets, max(1, math.floor(q * total)), min(lows), max(highs))
        for q in QUANTILES
    )


def _count_at_most(client: StateRedis, sets: list[str], value: float) -> int:
    pipe = client.pipeline(transaction=False)
    for key in sets:
        pipe.zcount(key, "-inf", repr(value))
    return sum(int(n) for n in pipe.execute())


def _value_at_rank(
    client: StateRedis, sets: list[str], rank: int, low: float, high: float
) -> float:
    """The smallest value with at least `rank` values at or below it, in [low, high]."""
    if _count_at_most(client, sets, low) >= rank:
        return low
    for _ in range(_BISECTIONS):  # invariant: count(low) < rank <= count(high)
        middle = (low + high) / 2
        if middle in (low, high):
            break
        if _count_at_most(client, sets, middle) >= rank:
            high = middle
        else:
            low = middle
    # `high` may fall between two indexed values: the answer is the largest one <= high
    pipe = client.pipeline(transaction=False)
    for key in sets:
        pipe.zrevrangebyscore(key, repr(high), "-inf", start=0, num=1, withscores=True)
    found = [float(r[0][1]) for r in pipe.execute() if r]
    return max(found)
