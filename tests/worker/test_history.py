"""The shopper's accumulated item history on a real Redis (`apply_event.lua`): what the
model reads live equals what the offline evaluation computes from the same events, it
stays within its bound, a shopper from before it starts from their recent list, and a
worker loading a version evaluated with more history than it stores says so."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexing import (
    AlsParams,
    ItemHistory,
    ModelParams,
    Weighting,
    accumulated_histories,
    decay_term,
    item_weights,
    read_events,
    save_model,
    train_model,
)
from indexing.history import ACCUMULATED_HALF_LIVES, HistoryEntry
from tests.clock import RUN_NOW
from tests.indexing.conftest import planted_rows
from tests.redis_server import delete_prefix
from worker.firing.index_store import open_index_store
from worker.firing.recommend import ShopperView, candidate_pool
from worker.service.runtime import Runtime
from worker.settings import Settings
from worker.shoppers.inputs import Limits, parse_event
from worker.shoppers.snapshot import ShopperReads

pytestmark = pytest.mark.redis_kinds  # a single node and a cluster

NOW = RUN_NOW
DAY = 86_400.0
TYPES = ("view", "search", "add_to_cart", "remove_from_cart", "purchase", "push_open")
# ids that sort differently as bytes and as positions, and one with a space
ITEMS = ("a", "b", "B", "c d", "é", "i10", "i9", "z")
_HISTORY = ShopperReads.of("history", "recent")


def _runtime(settings: Settings, prefix: str, **update: Any) -> Runtime:
    return Runtime.open(settings.model_copy(update={"key_prefix": prefix, **update}))


@pytest.fixture
def small(settings: Settings) -> Iterator[Runtime]:
    rt = _runtime(settings, settings.key_prefix, history_items_max=3)
    yield rt
    rt.close()


def _raw(n: int, user: str, type_: str, item: str | None, ts: float) -> dict[str, Any]:
    raw: dict[str, Any] = {"event_id": f"{user}-{n}", "user_id": user, "type": type_, "ts": ts}
    if item is not None:
        raw["item_id"] = item
    if type_ == "search":
        raw["query"] = "mugs"
    if type_ == "push_open":
        raw["push_id"] = "m1"
    return raw


def _apply(rt: Runtime, raws: list[dict[str, Any]]) -> list[int]:
    events = [parse_event(r, Limits(), NOW) for r in raws]
    result = rt.state.apply_events(events, NOW, uuid.uuid4().hex)
    rt.state.react_and_confirm(result, lambda pipe, marks: False)
    return result.statuses


def _live(rt: Runtime, user: str) -> list[HistoryEntry]:
    return _HISTORY.read(rt.redis, rt.keys, user).history


event_strategy = st.tuples(
    st.integers(0, 40),  # event number: repeats are duplicates the script drops
    st.sampled_from(("u1", "u2")),
    st.sampled_from(TYPES),
    st.sampled_from(ITEMS),
    st.integers(0, 12),  # ts: days back in coarse steps, so ties and disorder are common
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stream=st.lists(event_strategy, min_size=1, max_size=60),
    batches=st.lists(st.integers(1, 8), min_size=1, max_size=20),
    bound=st.integers(1, 5),
)
def test_live_history_equals_the_offline_computation_of_the_same_events(
    settings: Settings,
    redis_url: str,
    stream: list[tuple[int, str, str, str, int]],
    batches: list[int],
    bound: int,
) -> None:
    """Events out of ts order, ties, duplicates (in a batch and across batches), searches
    without an item: the state the script keeps is `ItemHistory`'s fold of the events it
    applied, and the weights read from it are `accumulated_histories`' over a log of those
    events, bit for bit, at both half-lives."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    rt = _runtime(settings, prefix, history_items_max=bound)
    try:
        raws = []
        for n, user, type_, item, days in stream:
            no_item = type_ == "search" and n % 3 == 0  # a search with a query only
            raws.append(_raw(n, user, type_, None if no_item else item, NOW - days * 7 * DAY))
        position = 0
        for size in [*batches, len(raws)]:
            _apply(rt, raws[position : position + size])
            position += size
            if position >= len(raws):
                break

        firsts: dict[str, dict[str, Any]] = {}
        for r in raws:  # the first of each event id, in the order applied
            firsts.setdefault(r["event_id"], r)
        applied = list(firsts.values())
        reference: dict[str, ItemHistory] = {}
        for r in applied:
            if "item_id" in r:
                reference.setdefault(r["user_id"], ItemHistory(bound)).add(
                    r["item_id"], r["type"], r["ts"]
                )
        rows = [{**r, "event_id": str(n)} for n, r in enumerate(applied) if "item_id" in r]
        offline = accumulated_histories(read_events(rows)[0], bound) if rows else None
        for user in ("u1", "u2"):
            live = _live(rt, user)
            ref = reference.get(user, ItemHistory(bound))
            expected = sorted(ref.entries.values(), key=lambda e: (e.last_ts, e.item_id))[::-1]
            assert [(e.item_id, e.last_ts, e.sums) for e in live] == [
                (e.item_id, e.last_ts, e.sums) for e in expected
            ]
            for half_life in ACCUMULATED_HALF_LIVES:
                weighting = Weighting(half_life_days=half_life)
                ids, weights = item_weights(live, NOW, weighting, bound)
                assert (ids, weights) == ref.weights(NOW, weighting)
                if offline is None:
                    assert ids == []
                    continue
                log = read_events(rows)[0]
                codes, got = offline.weights(weighting, NOW).get(
                    log.user_ids.index(user) if user in log.user_ids else -1,
                    (np.zeros(0, np.intp), np.zeros(0, np.float32)),
                )
                assert [log.item_ids[c] for c in codes.tolist()] == ids
                assert np.array_equal(got, np.array(weights, dtype=np.float32))
    finally:
        rt.close()
        delete_prefix(redis_url, prefix)


def test_history_keeps_the_most_recently_touched_items_only(small: Runtime) -> None:
    raws = [_raw(n, "u1", "view", f"i{n}", NOW - 100 + n) for n in range(10)]
    raws.append(_raw(10, "u1", "purchase", "i2", NOW - 1))  # touched again: stays
    raws.append(_raw(11, "u1", "view", "old", NOW - 1000))  # older than every kept: goes
    _apply(small, raws)
    user = small.keys.user("u1")
    assert [e.item_id for e in _live(small, "u1")] == ["i2", "i9", "i8"]
    assert small.redis.zcard(user.history) == 3
    assert sorted(small.redis.hkeys(user.history_sums)) == ["i2", "i8", "i9"]
    # i2 was pushed out by i5 and came back: its sums start again from the purchase
    assert _live(small, "u1")[0].sums == {"purchase": [1.0, decay_term(NOW - 1)]}


def test_a_lower_bound_trims_the_history_at_the_next_event(settings: Settings) -> None:
    wide = _runtime(settings, settings.key_prefix, history_items_max=6)
    narrow = _runtime(settings, settings.key_prefix, history_items_max=2)
    try:
        _apply(wide, [_raw(n, "u1", "view", f"i{n}", NOW - 100 + n) for n in range(6)])
        assert len(_live(wide, "u1")) == 6
        _apply(narrow, [_raw(6, "u1", "view", "i0", NOW)])
        assert [e.item_id for e in _live(narrow, "u1")] == ["i0", "i5"]
        assert narrow.redis.hlen(narrow.keys.user("u1").history_sums) == 2
    finally:
        wide.close()
        narrow.close()


def test_a_shopper_from_before_the_history_starts_from_their_recent_events(
    runtime: Runtime,
) -> None:
    raws = [
        _raw(0, "u1", "view", "a", NOW - 300),
        _raw(1, "u1", "search", None, NOW - 200),
        _raw(2, "u1", "add_to_cart", "a", NOW - 100),
        _raw(3, "u1", "view", "b", NOW - 50),
    ]
    _apply(runtime, raws)
    user = runtime.keys.user("u1")
    runtime.redis.delete(user.history, user.history_sums)  # as a worker before it wrote
    _apply(runtime, [_raw(4, "u1", "purchase", "c", NOW - 10)])

    reference = ItemHistory(runtime.settings.history_items_max)
    for r in [*raws, _raw(4, "u1", "purchase", "c", NOW - 10)]:
        if "item_id" in r:
            reference.add(r["item_id"], r["type"], r["ts"])
    live = _live(runtime, "u1")
    assert [e.item_id for e in live] == ["c", "b", "a"]
    expected = {e.item_id: e for e in reference.entries.values()}
    for entry in live:
        assert entry.last_ts == expected[entry.item_id].last_ts
        assert entry.sums == {
            t: [c, pytest.approx(d, rel=1e-12)]
            for t, (c, d) in expected[entry.item_id].sums.items()
        }


def test_user_view_shows_the_history(runtime: Runtime) -> None:
    from worker.service.userview import user_view

    _apply(runtime, [_raw(0, "u1", "view", "a", NOW - DAY), _raw(1, "u1", "view", "a", NOW)])
    [entry] = user_view(runtime.redis, runtime.keys, "u1", NOW)["item_history"]
    assert entry["item_id"] == "a" and entry["events"] == {"view": 2}
    assert entry["decayed"]["view"] == pytest.approx(1.0 + 0.5 ** (1 / 90), rel=1e-5)


def _publish(rt: Runtime, params: ModelParams) -> str:
    store = open_index_store(rt.settings)
    log, _ = read_events(planted_rows())
    version, _ = save_model(store.staging, train_model(log, params))
    store.publish(version, force=True)
    return version


def test_a_version_evaluated_with_more_history_than_is_stored_serves_and_says_so(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing stops a version built with `history_items` 200 from being served by workers
    that store 50 items (`PUSHREC_HISTORY_ITEMS_MAX`): it loads and serves with the 50,
    and its load says so (a warning naming both, a counter, the holder's field); so does a
    hot swap to it, and a version within the bound says nothing."""
    small = AlsParams(factors=8, iterations=3)
    rt = _runtime(settings, settings.key_prefix, history_items_max=50)
    try:
        wide = _publish(rt, ModelParams(als=small, history_items=200))
        with caplog.at_level(logging.WARNING, logger="worker.firing.index_holder"):
            holder = rt.index  # the worker's holder: loads the published version
        assert holder.version == wide
        [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert "200" in warning and "50" in warning and "PUSHREC_HISTORY_ITEMS_MAX" in warning
        assert holder.history_shortfall == warning
        assert rt.metrics.snapshot()["index.history_short"] == 1

        # it serves with what is stored
        _apply(rt, [_raw(n, "u1", "view", f"b1-{n}", NOW - 100 + n) for n in range(3)])
        history = _live(rt, "u1")
        shopper = ShopperView([], frozenset(), frozenset(), history)
        assert holder.index is not None
        pool = candidate_pool(holder.index, shopper, k=3, now=NOW)
        assert pool.history == ["b1-2", "b1-1", "b1-0"]
        assert any(c.source == "model" for c in pool.candidates)

        caplog.clear()
        narrow = _publish(rt, ModelParams(als=small, history_items=50))
        holder.between_tasks(now=1e12)  # past the check interval: a hot swap
        holder.wait_loaded()
        assert holder.version == narrow and holder.history_shortfall is None
        assert not [r for r in caplog.records if r.levelno == logging.WARNING]

        # a version read from the recent list: its window against the recent list's bound
        recent = _publish(rt, ModelParams(als=small, history_events=80))
        holder.between_tasks(now=2e12)
        holder.wait_loaded()
        assert holder.version == recent
        short = holder.history_shortfall
        assert short is not None and "80" in short and "PUSHREC_RECENT_ITEMS_MAX" in short
        assert rt.metrics.snapshot()["index.history_short"] == 2
    finally:
        rt.close()
