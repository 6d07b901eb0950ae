"""The index rebuild job reads the live interaction log and publishes a new version."""

from __future__ import annotations

import time
from pathlib import Path

from tests.indexing.conftest import planted_rows
from worker.firing.index_holder import IndexHolder
from worker.firing.index_store import open_index_store
from worker.service import ingest
from worker.service.rebuild import rebuild_index
from worker.service.runtime import Runtime
from worker.settings import Settings


def test_rebuild_from_the_interaction_log_publishes_and_workers_follow(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"index_store": tmp_path / "index"})
    rt = Runtime.open(settings)
    try:
        rows = planted_rows()
        ingest.upsert_items(
            rt,
            [{"item_id": r["item_id"], "category": r["item_id"][:2]} for r in rows[:40]],
            time.time(),
        )
        for start in range(0, len(rows), 500):
            batch = [
                {**r, "ts": float(r["ts"]), "quantity": 1, "price": None}
                for r in rows[start : start + 500]
            ]
            batch = [{k: v for k, v in e.items() if v not in (None, "")} for e in batch]
            assert ingest.track_batch(rt, batch, time.time(), f"d{start}")["rejected"] == 0

        result = rebuild_index(rt.redis, rt.keys, settings, rt.catalog, force=True)

        assert result["refused"] is None
        assert rt.redis.get(rt.keys.index_version) == result["version"]
        assert result["counts"]["items"] == 48
        holder = IndexHolder(open_index_store(settings), rt.redis, rt.keys)
        holder.load_now()
        assert holder.version == result["version"]
        assert holder.index is not None
        similar = holder.index.similar(["b1-3"], k=5)[0]
        assert all(item.startswith("b1-") for item, _ in similar)
    finally:
        rt.close()
