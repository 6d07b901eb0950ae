"""The index rebuild job: interaction log (Redis stream) -> a new published index version.

Run by the scheduler (cron) through the `pushrec.rebuild_index` task on the maintenance
queue, or by hand (`pushrec index rebuild`). The task has its own time limit
(`rebuild_time_limit_s`), which may exceed the broker's visibility timeout: a Redis broker
then hands the still-running task's message to another worker. A rebuild therefore holds a
lease (`Keys.rebuild_lock`, renewed while it runs, gone `REBUILD_LEASE_S` after its holder
dies): the redelivered copy, or a `pushrec index rebuild` started meanwhile, finds it held
and ends without building. The build goes through `indexing`'s quality
gate; once published, the Redis pointer is flipped and every worker swaps to it between
tasks, and the catalog marks the build covers give way to its sold-out snapshot
(`worker/firing/live_items.py`). A build the gate refuses stays on disk and changes
nothing.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterator
from typing import Any

from indexing import Item, ModelParams, read_events, read_model_params
from indexing.pipeline import build_version
from worker.firing.index_store import open_index_store, point_workers_at
from worker.firing.live_items import current_seq, publish_snapshot
from worker.settings import Settings
from worker.shoppers.catalog import Catalog
from worker.store.client import StateRedis
from worker.store.keys import Keys
from worker.store.lease import Lease

log = logging.getLogger(__name__)

_CHUNK = 10_000
REBUILD_LEASE_S = 60.0
READING = "reading the log"

Progress = Callable[[str, int | None], None]


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
        for item_id, fields in catalog.read_many(catalog.all_ids()).items()
    }


def model_params(settings: Settings) -> tuple[ModelParams, str]:
    """What a rebuild trains with, and where it comes from: the file `model_params` names
    (a shop's tuned parameters, `pushrec eval --json`), else the shipped defaults.
    Raises `InputError` for a bad file: a rebuild that quietly fell back to the defaults
    would undo the shop's tuning."""
    if settings.model_params is None:
        return ModelParams(), "the shipped defaults"
    return read_model_params(settings.model_params), str(settings.model_params)


def _counted(rows: Iterator[dict[str, str]], progress: Progress) -> Iterator[dict[str, str]]:
    n = 0
    for n, row in enumerate(rows, start=1):
        if n % _CHUNK == 0:
            progress(READING, n)
        yield row
    progress(READING, n)


def rebuild_index(
    client: StateRedis,
    keys: Keys,
    settings: Settings,
    catalog: Catalog,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Build from the live interaction log and publish through the gate; flip the pointer.
    `progress(stage, rows)` hears each stage start (`READING` with the rows read so far,
    then `indexing.STAGES` with None). Raises `LeaseHeldError` when a rebuild is running."""
    report_progress: Progress = progress or (lambda stage, rows: None)
    with Lease(client, keys.rebuild_lock, REBUILD_LEASE_S).held():
        return _rebuild(client, keys, settings, catalog, force, report_progress)


def _rebuild(
    client: StateRedis,
    keys: Keys,
    settings: Settings,
    catalog: Catalog,
    force: bool,
    progress: Progress,
) -> dict[str, Any]:
    events, report = read_events(_counted(interaction_rows(client, keys), progress))
    seq = current_seq(client, keys)  # before the catalog: later marks stay for the workers
    items = catalog_items(catalog)
    store = open_index_store(settings)
    params, source = model_params(settings)
    log.info("rebuilding the index with the model parameters of %s", source)
    result = build_version(
        events,
        store,
        catalog=items,
        params=params,
        publish_it=True,
        force=force,
        progress=lambda stage: progress(stage, None),
    )
    if result.published is not None and result.refused is None:
        point_workers_at(client, keys, result.version)
        publish_snapshot(client, keys, seq, (i for i, item in items.items() if item.stock == 0))
        log.info("published index %s (recall@10 %s)", result.version, result.served_recall)
    else:
        log.warning("index %s not published: %s", result.version, result.refused)
    return {**result.as_dict(), "rows": report.as_dict()}
