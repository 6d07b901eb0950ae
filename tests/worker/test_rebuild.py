"""The index rebuild job reads the live interaction log and publishes a new version."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from indexing import STAGES, AlsParams, BlendWeights, ModelParams, list_versions
from tests.indexing.conftest import planted_rows
from worker.contract import REBUILD_INDEX, TRACK
from worker.firing.index_holder import IndexHolder
from worker.firing.index_store import open_index_store
from worker.service import ingest, tasks
from worker.service.app import create_app
from worker.service.rebuild import READING, REBUILD_LEASE_S, model_params, rebuild_index
from worker.service.runtime import Runtime
from worker.settings import Settings
from worker.store.lease import Lease, LeaseHeldError


def feed(rt: Runtime) -> int:
    """The planted events into the interaction log (and 40 items into the catalog);
    returns how many."""
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
    return len(rows)


def test_rebuild_from_the_interaction_log_publishes_and_workers_follow(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"index_store": tmp_path / "index"})
    rt = Runtime.open(settings)
    try:
        feed(rt)

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


def test_a_rebuild_reports_its_stages_in_order_under_its_lease(runtime: Runtime) -> None:
    rt = runtime
    events = feed(rt)
    seen: list[tuple[str, int | None, bool]] = []

    def progress(stage: str, rows: int | None) -> None:
        seen.append((stage, rows, rt.redis.get(rt.keys.rebuild_lock) is not None))

    rebuild_index(rt.redis, rt.keys, rt.settings, rt.catalog, force=True, progress=progress)

    assert seen == [
        (READING, events, True),
        *((stage, None, True) for stage in STAGES),
    ]
    assert rt.redis.get(rt.keys.rebuild_lock) is None  # released


def test_a_rebuild_while_another_runs_is_turned_away(runtime: Runtime) -> None:
    """A copy of the task redelivered past the visibility timeout (or a rebuild by hand)
    finds the lease held: it ends at once, builds and publishes nothing."""
    rt = runtime
    feed(rt)
    running = Lease(rt.redis, rt.keys.rebuild_lock, REBUILD_LEASE_S)
    assert running.acquire()

    with pytest.raises(LeaseHeldError, match=running.owner):
        rebuild_index(rt.redis, rt.keys, rt.settings, rt.catalog, force=True)
    outcome = tasks._rebuild(None, rt, {})  # type: ignore[arg-type]  # the task's body

    assert outcome == {"skipped": f"{rt.keys.rebuild_lock} is held by {running.owner}"}
    assert rt.redis.get(rt.keys.index_version) is None
    assert list_versions(rt.settings.state_dir / "index") == []
    assert rt.redis.get(rt.keys.rebuild_lock) == running.owner  # not taken from its holder


def test_the_rebuild_task_alone_has_the_rebuild_time_limit(settings: Settings) -> None:
    settings = settings.model_copy(update={"rebuild_time_limit_s": 5400})
    app = create_app(settings)
    rebuild = app.tasks[REBUILD_INDEX]
    assert (rebuild.time_limit, rebuild.soft_time_limit) == (5400, 5390)
    track = app.tasks[TRACK]
    assert (track.time_limit, track.soft_time_limit) == (120, 110)  # task_time_limit_s
    assert settings.rebuild_time_limit_s > settings.visibility_timeout_s  # allowed: the lease


def test_an_idle_process_following_the_pointer_serves_a_new_version_without_a_task(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"index_store": tmp_path / "index"})
    rt = Runtime.open(settings)
    holder = IndexHolder(open_index_store(settings), rt.redis, rt.keys, check_every_s=0.05)
    try:
        feed(rt)
        first = rebuild_index(rt.redis, rt.keys, settings, rt.catalog, force=True)["version"]
        holder.load_now()
        holder.follow()
        assert holder.version == first

        second = rebuild_index(rt.redis, rt.keys, settings, rt.catalog, force=True)["version"]

        assert second != first
        deadline = time.monotonic() + 30
        while holder.version != second and time.monotonic() < deadline:
            time.sleep(0.05)
        assert holder.version == second  # no between_tasks call: the follower did it
    finally:
        holder.close()
        rt.close()


def test_a_rebuild_trains_with_the_shops_tuned_parameters(
    settings: Settings, tmp_path: Path
) -> None:
    tuned = ModelParams(als=AlsParams(factors=8), blend=BlendWeights(0.0, 1.0, 0.5))
    params_file = tmp_path / "eval.json"
    params_file.write_text(json.dumps({"params": tuned.as_dict(), "metrics": {}}))
    settings = settings.model_copy(
        update={"index_store": tmp_path / "index", "model_params": params_file}
    )
    rt = Runtime.open(settings)
    try:
        feed(rt)

        result = rebuild_index(rt.redis, rt.keys, settings, rt.catalog, force=True)

        store = open_index_store(settings)
        manifest = store.read_manifest(result["version"])
        assert ModelParams.from_dict(manifest["params"]) == tuned
        assert model_params(settings.model_copy(update={"model_params": None}))[0] == (
            ModelParams()
        )
    finally:
        rt.close()


def test_a_bad_parameters_file_stops_the_settings_naming_it(
    settings: Settings, tmp_path: Path
) -> None:
    bad = tmp_path / "eval.json"
    bad.write_text('{"params": {"als": 3}}')
    with pytest.raises(ValidationError, match=r"eval\.json"):
        Settings(**{**settings.model_dump(), "model_params": bad})
    with pytest.raises(ValidationError, match=r"missing\.json"):
        Settings(**{**settings.model_dump(), "model_params": tmp_path / "missing.json"})
