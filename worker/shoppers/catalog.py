"""The item catalog: upserts with price and stock history, and reads through a
per-process cache.

Firing reads the catalog entries of every candidate it looks at (a dozen an event), most
of them the same few thousand items again and again. Each process keeps the entries it
read (`_CACHE_MAX`, emptied when full) and follows every upsert through a change feed: an
upsert marks its items with a new sequence number (`keys.catalog_changed`, one entry per
item, so bounded by the catalogue), and every read first asks for the marks past the last
one it saw, in the same round trip as the entries it lacks (or in one its caller makes
anyway: firing asks with the shoppers it reads, `queue_feed`), and drops the entries they
name. A read is therefore as fresh as a read from Redis at that moment: a cached entry is
used only if no upsert of its item was marked before the read. A sequence number below
the last one seen means Redis lost the feed (restarted without its data): nothing cached
is trusted then.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from worker.shoppers.inputs import Item
from worker.store.client import StatePipeline, StateRedis
from worker.store.keys import Keys
from worker.store.metrics import Metrics
from worker.store.scripts import Scripts

_CACHE_MAX = 20_000  # entries of ~1 KB; more distinct items than this empty it


@dataclass(frozen=True)
class Upserted:
    """What an upsert changed: price and stock changes (oldest item first), and the items
    whose category, brand or sold-out state changed (the served index follows those:
    `worker.firing.live_items`)."""

    changes: list[ItemChange]
    live: list[str]


@dataclass(frozen=True)
class ItemChange:
    """A price or stock change, as later rules (price drop, back in stock) need it."""

    item_id: str
    field: str
    old: float
    new: float
    ts: float


class Catalog:
    def __init__(
        self,
        client: StateRedis,
        keys: Keys,
        scripts: Scripts,
        metrics: Metrics,
        changes_max: int,
    ) -> None:
        self._client = client
        self._keys = keys
        self._scripts = scripts
        self._metrics = metrics
        self._changes_max = changes_max
        self._cache: dict[str, dict[str, str]] = {}
        self._seen = 0  # the last change mark the cache has applied
        self._lock = threading.Lock()  # the index follower's thread reads too

    def upsert(self, items: Sequence[Item], now: float, delivery_id: str = "") -> Upserted:
        """Store `items`; an upsert older (by `ts`) than the stored one is ignored. Items
        whose category, brand or sold-out state changed are marked for the processes
        serving the index, in the same follow-up round trip. `delivery_id` (the task's):
        its redelivery reports the price and stock changes it made again
        (`upsert_item.lua`), so their reactions are not lost to a crash in between."""
        if not items:
            return Upserted([], [])
        pipe = self._client.pipeline(transaction=False)
        for item in items:
            args: list[str | float | int] = [
                repr(item.ts if item.ts is not None else now),
                self._changes_max,
                delivery_id,
            ]
            for name, value in item.catalog_fields().items():
                args += [name, value]
            keys = self._keys.item(item.item_id)
            Scripts.call_in(pipe, self._scripts.upsert_item, [keys.item, keys.changes], args)
        results = pipe.execute()

        changes: list[ItemChange] = []
        live: list[str] = []
        upserted: list[str] = []
        applied = stale = 0
        follow_up = self._client.pipeline(transaction=False)
        for item, (status, changes_json, marked) in zip(items, results, strict=True):
            if int(status) == 0:
                stale += 1
                continue
            applied += 1
            follow_up.sadd(self._keys.catalog, item.item_id)
            upserted.append(item.item_id)
            if int(marked):
                live.append(item.item_id)
            changes += [
                ItemChange(
                    item.item_id, c["field"], float(c["old"]), float(c["new"]), float(c["ts"])
                )
                for c in json.loads(changes_json)
            ]
        self._metrics.add(
            {"items.upserted": applied, "items.stale": stale, "items.changes": len(changes)},
            pipe=follow_up,
        )
        if live:  # after the SADD: a build that reads the mark's number lists the item
            marks = [self._keys.live_seq, self._keys.live_items]
            Scripts.call_in(follow_up, self._scripts.live_mark, marks, live)
        if upserted:
            marks = [self._keys.catalog_seq, self._keys.catalog_changed]
            Scripts.call_in(follow_up, self._scripts.live_mark, marks, upserted)
        follow_up.execute()
        return Upserted(changes, live)

    def queue_feed(self, pipe: StatePipeline) -> int:
        """Queue a read of the change feed (two replies, for `apply_feed`) in a round
        trip the caller makes anyway, so that `get_many(..., feed_read=True)` after it
        needs none of its own: its entries are then as fresh as that round trip. Returns
        the mark the read starts past."""
        with self._lock:
            seen = self._seen
        self._queue_feed(pipe, seen)
        return seen

    def _queue_feed(self, pipe: StatePipeline, since: int) -> None:
        pipe.get(self._keys.catalog_seq)
        pipe.zrangebyscore(self._keys.catalog_changed, f"({since}", "+inf", withscores=True)

    def apply_feed(self, since: int, last: str | None, changed: list[tuple[str, float]]) -> None:
        """Drop the cached entries named by the feed read past `since` (`queue_feed`)."""
        with self._lock:
            self._apply_feed(since, last, changed)

    def _apply_feed(
        self, since: int, last: str | None, changed: list[tuple[str, float]]
    ) -> set[str]:
        """Drop the cached entries that the feed read past `since` names (all of them when
        the feed started over) and return the items named. Dropping more than needed is
        never wrong: an entry another thread cached after a later read is only read again."""
        dropped = {item_id for item_id, _ in changed}
        if int(last or 0) < since:  # the feed started over
            dropped |= set(self._cache)
            self._cache.clear()
            self._seen = 0
        for item_id, seq in changed:
            self._cache.pop(item_id, None)
            self._seen = max(self._seen, int(seq))
        return dropped

    def get_many(
        self, item_ids: Sequence[str], *, feed_read: bool = False
    ) -> dict[str, dict[str, str]]:
        """The known items among `item_ids`, as fresh as a read from Redis now (module
        doc); unknown ones are absent. One round trip, two when an upsert since the last
        read touched an entry already cached. `feed_read`: the caller has just applied
        the change feed (`queue_feed`): the entries are as fresh as that, and all of them
        cached costs no round trip."""
        wanted = list(dict.fromkeys(item_ids))
        with self._lock:
            missing = [i for i in wanted if i not in self._cache]
            pipe = self._client.pipeline(transaction=False)
            since = self._seen
            if not feed_read:
                self._queue_feed(pipe, since)
            for item_id in missing:
                pipe.hgetall(self._keys.item(item_id).item)
            entries = pipe.execute() if len(pipe) else []
            dropped: set[str] = set()
            if not feed_read:
                last, changed, *entries = entries
                dropped = self._apply_feed(since, last, changed)
            # read after the marks: as new as they are, or newer (a later mark drops it)
            found = {i: self._cache[i] for i in wanted if i in self._cache}
            found.update((i, f) for i, f in zip(missing, entries, strict=True) if f)
            if again := [i for i in wanted if i in dropped and i not in missing]:
                found.update(self.read_many(again))
            # not `found.keys() - self._cache.keys()`: that walks the whole cache
            for item_id in [i for i in found if i not in self._cache]:
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()
                self._cache[item_id] = found[item_id]
            return found

    def read_many(self, item_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """The known items among `item_ids` straight from Redis, in one round trip,
        leaving the cache alone (bulk reads: the index build)."""
        pipe = self._client.pipeline(transaction=False)
        for item_id in item_ids:
            pipe.hgetall(self._keys.item(item_id).item)
        return {i: f for i, f in zip(item_ids, pipe.execute(), strict=True) if f}

    def all_ids(self) -> list[str]:
        return sorted(str(item_id) for item_id in self._client.smembers(self._keys.catalog))

    def get(self, item_id: str) -> dict[str, str]:
        fields: dict[str, str] = self._client.hgetall(self._keys.item(item_id).item)  # type: ignore[assignment]
        return fields

    def changes(self, item_id: str, count: int = 20) -> list[dict[str, float | str]]:
        rows = self._client.lrange(self._keys.item(item_id).changes, 0, count - 1)
        return [json.loads(row) for row in rows]
