"""The item catalog: upserts with price and stock history."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from worker.shoppers.inputs import Item
from worker.store.client import StateRedis
from worker.store.keys import Keys
from worker.store.metrics import Metrics
from worker.store.scripts import Scripts


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

    def upsert(self, items: Sequence[Item], now: float) -> Upserted:
        """Store `items`; an upsert older (by `ts`) than the stored one is ignored. Items
        whose category, brand or sold-out state changed are marked for the processes
        serving the index, in the same follow-up round trip."""
        if not items:
            return Upserted([], [])
        pipe = self._client.pipeline(transaction=False)
        for item in items:
            args: list[str | float | int] = [
                repr(item.ts if item.ts is not None else now),
                self._changes_max,
            ]
            for name, value in item.catalog_fields().items():
                args += [name, value]
            keys = self._keys.item(item.item_id)
            Scripts.call_in(pipe, self._scripts.upsert_item, [keys.item, keys.changes], args)
        results = pipe.execute()

        changes: list[ItemChange] = []
        live: list[str] = []
        applied = stale = 0
        follow_up = self._client.pipeline(transaction=False)
        for item, (status, changes_json, marked) in zip(items, results, strict=True):
            if int(status) == 0:
                stale += 1
                continue
            applied += 1
            follow_up.sadd(self._keys.catalog, item.item_id)
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
        follow_up.execute()
        return Upserted(changes, live)

    def get_many(self, item_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """The known items among `item_ids` (one round trip); unknown ones are absent."""
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
