"""The index rebuild job: interaction log (Redis stream) -> a new published index version.

Run by the scheduler (cron) through the `pushrec.rebuild_index` task on the maintenance
queue, or by hand (`pushrec index rebuild`). The build goes through `indexing`'s quality
gate; once published, the Redis pointer is flipped and every worker swaps to it between
tasks, and the catalog marks the build covers give way to its sold-out snapshot
(`worker/firing/live_items.py`). A build the gate refuses stays on disk and changes
nothing.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterator
from typing import Any

from indexing import Item, read_events
from indexing.pipeline import build_version
from worker.firing.index_store import open_index_store
from worker.firing.live_items import current_seq, publish_snapshot
from worker.settings import Settings
from worker.shoppers.catalog import Catalog
from worker.store.client import StateRedis
from worker.store.keys import Keys

log = logging.getLogger(__name__)

_CHUNK = 10_000


def _entry_order(entry: tuple[str, dict[str, str]]) -> tuple[int, int]:
    ms, _, seq = entry[0].partition("-")
    return int(ms), int(seq)


def _stream_entries(client: StateRedis, key: str) -> Iterator[tuple[str, dict[str, str]]]:
    start = "-"
    while True:
        rows: list[tuple[str, dict[str, str]]] = client.xrange(
            key, min=start, max="+", count=_CHUNK
        )  # type: ignore[assignment]
        yield from rows
        if len(rows) < _CHUNK:
            return
        start = "(" + rows[-1][0]


def interaction_rows(client: StateRedis, keys: Keys) -> Iterator[dict[str, str]]:
    """Every entry of the interaction log, all shards merged by entry id (the time each
    was logged), oldest first, read in chunks."""
    shards = [_stream_entries(client, keys.interaction_log(n)) for n in keys.all_shards]
    for _, fields in heapq.merge(*shards, key=_entry_order):
        yield fields


def catalog_items(catalog: Catalog) -> dict[str, Item]:
    """The catalog as `indexing` items (cold-start vectors come from their attributes)."""
    return {
        item_id: Item(
            item_id=item_id,
            title=fields.get("title", ""),
            category=fields.get("category", ""),
            brand=fields.get("brand", ""),
            price=float(fields["price"]) if fields.get("price") else None,
            stock=int(fields["stock"]) if fields.get("stock") else None,
        )
        for item_id, fields in catalog.get_many(catalog.all_ids()).items()
    }


def rebuild_index(
    client: StateRedis, keys: Keys, settings: Settings, catalog: Catalog, *, force: bool = False
) -> dict[str, Any]:
    """Build from the live interaction log and publish through the gate; flip the pointer."""
    events, report = read_events(interaction_rows(client, keys))
    seq = current_seq(client, keys)  # before the catalog: later marks stay for the workers
    items = catalog_items(catalog)
    result = build_version(
        events,
        open_index_store(settings),
        catalog=items,
        publish_it=True,
        force=force,
    )
    if result.published is not None and result.refused is None:
        client.set(keys.index_version, result.version)
        publish_snapshot(client, keys, seq, (i for i, item in items.items() if item.stock == 0))
        log.info("published index %s (recall@10 %s)", result.version, result.served_recall)
    else:
        log.warning("index %s not published: %s", result.version, result.refused)
    return {**result.as_dict(), "rows": report.as_dict()}
