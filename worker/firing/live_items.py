"""What the served index follows between builds: items added to the catalog, items sold out.

An item upserted after the last build with a category or brand enters recommendations
and neighbour lookups at once, with the vector the build would have given it (the mean of
the index's warm items of its category, else brand: `LoadedIndex.attribute_vector`,
`add_items`); an item whose stock goes to 0 leaves every answer (`LoadedIndex.block`)
until it is back in stock. The catalog has no other "withdrawn" state: a withdrawn item
is one upserted with stock 0.

Redis (keys in `Keys.live_*`, one slot):

- `Catalog.upsert` marks an item (zset item -> a new sequence number) when its category or
  brand changed or it crossed between sold out and in stock (`upsert_item.lua` says which).
- The rebuild, when it publishes, writes the sold-out set as the build saw it with the
  sequence number it read before reading the catalog, and drops the marks up to that
  number: the new version knows those items (`publish_snapshot`).

Each process serving the index (`IndexHolder`) applies, to a version it has just loaded,
the snapshot and every mark left (`LiveItems.load`), and later the marks past the last one
it applied (`LiveItems.catch_up`): it polls the sequence number in the round trip that
already asks for the published version, at most every `check_every_s` and before the
next task, so another process serves a change at most that long after it (the process
that took the upsert serves it before its task ends). Applying a mark reads the item's
catalog entry, the truth whatever order marks arrive in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from indexing import LoadedIndex
from worker.store.client import StateRedis
from worker.store.keys import Keys

log = logging.getLogger(__name__)

_FIELDS = ("category", "brand", "stock")
_CHUNK = 10_000


def current_seq(client: StateRedis, keys: Keys) -> int:
    """The sequence number of the last mark (0 before any)."""
    return int(client.get(keys.live_seq) or 0)


def publish_snapshot(client: StateRedis, keys: Keys, seq: int, sold_out: Iterable[str]) -> None:
    """After a build that read the catalog once the marks were at `seq` is published: its
    sold-out items replace the set, and the marks it covers are dropped (one MULTI)."""
    pipe = client.pipeline(transaction=True)
    pipe.delete(keys.live_sold_out)
    ids = sorted(sold_out)
    for start in range(0, len(ids), _CHUNK):
        pipe.sadd(keys.live_sold_out, *ids[start : start + _CHUNK])
    pipe.set(keys.live_snapshot, seq)
    pipe.zremrangebyscore(keys.live_items, "-inf", seq)
    pipe.execute()


def _score_pairs(reply: Sequence[Any]) -> list[tuple[str, float]]:
    """A ZRANGE WITHSCORES reply as (member, score) pairs, in whichever shape redis-py
    gives it in a MULTI on Redis Cluster: 7.4.1 handed back the raw flat reply (member,
    score, member, ...) there, 8.2 gives pairs."""
    if reply and not isinstance(reply[0], (list, tuple)):
        reply = list(zip(reply[::2], reply[1::2], strict=True))
    return [(str(member), float(score)) for member, score in reply]


class LiveItems:
    """Reads the marks and applies them to a `LoadedIndex` (the caller serialises calls on
    one index; the index's own changes are safe for lookups running meanwhile)."""

    def __init__(self, client: StateRedis, keys: Keys) -> None:
        self._client = client
        self._keys = keys

    def load(self, index: LoadedIndex) -> int:
        """Bring a version just loaded up to date: block the published snapshot's sold-out
        items, apply every mark after it. Returns the last sequence number applied."""
        pipe = self._client.pipeline(transaction=True)
        pipe.get(self._keys.live_snapshot)
        pipe.smembers(self._keys.live_sold_out)
        pipe.zrange(self._keys.live_items, 0, -1, withscores=True)
        snapshot, sold_out, marks = pipe.execute()
        index.block(sold_out)
        return self._apply(index, _score_pairs(marks), int(snapshot or 0))

    def catch_up(self, index: LoadedIndex, seen: int) -> int:
        """Apply the marks after `seen`; returns the last sequence number applied."""
        marks = self._client.zrangebyscore(
            self._keys.live_items, f"({seen}", "+inf", withscores=True
        )
        return self._apply(index, marks, seen)  # type: ignore[arg-type]

    def _apply(self, index: LoadedIndex, marks: Sequence[tuple[str, float]], seen: int) -> int:
        if not marks:
            return seen
        item_ids = [str(item_id) for item_id, _ in marks]
        pipe = self._client.pipeline(transaction=False)
        for item_id in item_ids:
            pipe.hmget(self._keys.item(item_id).item, _FIELDS)
        entries = pipe.execute()
        sold_out = [i for i, (_, _, stock) in zip(item_ids, entries, strict=True) if stock == "0"]
        index.unblock(set(item_ids) - set(sold_out))
        index.block(sold_out)
        added, vectors = [], []
        for item_id, (category, brand, _) in zip(item_ids, entries, strict=True):
            if index.is_built(item_id) or not (category or brand):
                continue
            vector = index.attribute_vector(category or "", brand or "")
            if vector is not None:
                added.append(item_id)
                vectors.append(vector)
        if added:
            taken = index.add_items(added, np.vstack(vectors))
            if len(taken) < len(added):
                log.warning(
                    "index %s: overlay full (%d items), %d new items wait for the next build",
                    index.version, index.overlay_max, len(added) - len(taken),
                )  # fmt: skip
        return max(seen, int(max(score for _, score in marks)))
