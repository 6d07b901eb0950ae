"""New items and sold-out items reach the served index of every process without a rebuild.

Two runtimes stand for two worker processes: each has its own Redis connections, index
holder and loaded index, and learns of the other's upserts only through Redis.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.indexing.conftest import ITEMS_PER_BLOCK, planted_rows
from tests.worker.realtime import planted_catalog
from worker.firing.index_holder import IndexHolder
from worker.firing.live_items import _score_pairs
from worker.service import ingest
from worker.service.rebuild import rebuild_index
from worker.service.runtime import Runtime
from worker.settings import Settings

HISTORY = ["b1-0", "b1-1", "b1-3"]
WEIGHTS = [5.0, 3.0, 1.0]

# On a cluster too: a version is loaded by one MULTI, whose replies redis-py shapes
# differently there.
pytestmark = pytest.mark.redis_kinds


@pytest.fixture
def indexed(settings: Settings, tmp_path: Path) -> Settings:
    """The planted catalog (category block<b>) and events, built and published."""
    settings = settings.model_copy(update={"index_store": tmp_path / "index"})
    rt = Runtime.open(settings)
    try:
        ingest.upsert_items(rt, planted_catalog(), time.time())
        rows = planted_rows()
        for start in range(0, len(rows), 500):
            batch = [
                {k: v for k, v in {**r, "ts": float(r["ts"]), "quantity": 1}.items() if v != ""}
                for r in rows[start : start + 500]
            ]
            assert ingest.track_batch(rt, batch, time.time(), f"d{start}")["rejected"] == 0
        assert rebuild_index(rt.redis, rt.keys, settings, rt.catalog, force=True)["refused"] is None
        # the build knows every item marked so far: the marks are gone
        assert rt.redis.zcard(rt.keys.live_items) == 0
    finally:
        rt.close()
    return settings


@pytest.fixture
def two(indexed: Settings) -> Iterator[tuple[Runtime, Runtime]]:
    """Two processes serving the published index."""
    a, b = Runtime.open(indexed), Runtime.open(indexed)
    try:
        for rt in (a, b):
            assert rt.index.index is not None
        yield a, b
    finally:
        a.close()
        b.close()


class Clock:
    """Monotonic time handed to `between_tasks`: each call is a check (no sleeping)."""

    def __init__(self) -> None:
        self.now = 0.0

    def next_check(self, holder: IndexHolder) -> None:
        self.now += 3600.0
        holder.between_tasks(self.now)


def served(rt: Runtime) -> dict[str, Any]:
    index = rt.index.index
    assert index is not None
    return {
        "known": {i for i in ("late-1", "b1-2") if i in index},
        "recommended": [i for i, _ in index.recommend(HISTORY, WEIGHTS, k=len(index) + 5)],
        "similar": [i for i, _ in index.similar(["b1-0"], k=ITEMS_PER_BLOCK)[0]],
    }


def test_a_new_item_is_served_at_once_here_and_at_the_next_check_elsewhere(
    two: tuple[Runtime, Runtime],
) -> None:
    a, b = two
    clock = Clock()
    ingest.upsert_items(a, [{"item_id": "late-1", "category": "block1", "stock": 3}], time.time())

    index = a.index.index
    assert index is not None and "late-1" in index and not index.is_built("late-1")
    here = served(a)
    assert "late-1" in here["recommended"] and "late-1" in here["similar"]
    neighbours = [i for i, _ in index.similar(["late-1"], k=5)[0]]
    assert all(i.startswith("b1-") for i in neighbours)

    assert "late-1" not in served(b)["known"]  # b has not checked yet: Redis is all they share
    clock.next_check(b.index)
    there = served(b)
    assert "late-1" in there["recommended"] and "late-1" in there["similar"]


def test_a_process_started_after_the_changes_serves_them_from_its_first_load(
    indexed: Settings,
) -> None:
    a = Runtime.open(indexed)
    try:
        changes = [
            {"item_id": "late-1", "category": "block1", "stock": 3},
            {"item_id": "b1-2", "stock": 0},
        ]
        ingest.upsert_items(a, changes, time.time())
        assert a.redis.zcard(a.keys.live_items) == 2  # marks left for the next load
    finally:
        a.close()

    late = Runtime.open(indexed)
    try:
        now = served(late)
        assert "late-1" in now["recommended"] and "late-1" in now["similar"]
        assert "b1-2" not in now["recommended"] and "b1-2" not in now["similar"]
    finally:
        late.close()


def test_sold_out_items_leave_every_process_and_come_back_when_restocked(
    two: tuple[Runtime, Runtime],
) -> None:
    a, b = two
    clock = Clock()
    ingest.upsert_items(a, [{"item_id": "late-1", "category": "block1", "stock": 3}], time.time())
    clock.next_check(b.index)
    assert "b1-2" in served(b)["similar"]

    out = [{"item_id": "late-1", "stock": 0}, {"item_id": "b1-2", "stock": 0}]
    ingest.upsert_items(a, out, time.time())
    clock.next_check(b.index)
    for rt in (a, b):
        now = served(rt)
        for item in ("late-1", "b1-2"):
            assert item not in now["recommended"] and item not in now["similar"]

    ingest.upsert_items(a, [{"item_id": "b1-2", "stock": 4}], time.time())
    clock.next_check(b.index)
    for rt in (a, b):
        now = served(rt)
        assert "b1-2" in now["recommended"] and "late-1" not in now["recommended"]


def test_a_new_version_knows_the_item_and_keeps_what_is_sold_out(
    indexed: Settings, two: tuple[Runtime, Runtime]
) -> None:
    a, b = two
    clock = Clock()
    first = b.index.version
    upserts = [
        {"item_id": "late-1", "category": "block1", "stock": 3},
        {"item_id": "b1-2", "stock": 0},
    ]
    ingest.upsert_items(a, upserts, time.time())
    clock.next_check(b.index)
    result = rebuild_index(a.redis, a.keys, indexed, a.catalog, force=True)
    assert result["refused"] is None and result["version"] != first
    assert a.redis.smembers(a.keys.live_sold_out) == {"b1-2"}

    clock.next_check(b.index)
    b.index.wait_loaded()
    assert b.index.version == result["version"]
    index = b.index.index
    assert index is not None
    assert index.is_built("late-1") and index.is_cold("late-1") and index.overlay == ()
    assert "b1-2" in index.blocked and "b1-2" not in served(b)["recommended"]
    assert "late-1" in served(b)["recommended"]


def test_only_changes_of_what_the_index_serves_are_marked(runtime: Runtime) -> None:
    from worker.shoppers.inputs import Item, parse_item

    def live(*items: dict[str, Any]) -> list[str]:
        parsed: list[Item] = [parse_item(i, runtime.limits, time.time()) for i in items]
        return runtime.catalog.upsert(parsed, time.time()).live

    assert live({"item_id": "x", "category": "c", "stock": 5}) == ["x"]  # new, with a category
    assert live({"item_id": "x", "category": "c", "price": 3.0, "stock": 4}) == []
    assert live({"item_id": "x", "brand": "b"}) == ["x"]
    assert live({"item_id": "x", "stock": 0}, {"item_id": "y", "stock": 0}) == ["x", "y"]
    assert live({"item_id": "x", "stock": 0}) == []
    assert live({"item_id": "x", "stock": 2}) == ["x"]
    assert live({"item_id": "z", "title": "no attributes", "stock": 1}) == []
    marks = [runtime.redis.zscore(runtime.keys.live_items, i) for i in "xyz"]
    assert marks == [4.0, 3.0, None]  # one number per upsert call, an item's last kept


@pytest.mark.parametrize(
    "reply",
    [["a", "1", "b", "2.5"], [("a", 1.0), ("b", 2.5)], [["a", 1.0], ["b", 2.5]]],
    ids=["flat", "tuples", "lists"],
)
def test_marks_are_read_in_any_shape_redis_py_gives(reply: list[Any]) -> None:
    assert _score_pairs(reply) == [("a", 1.0), ("b", 2.5)]
    assert _score_pairs([]) == []
