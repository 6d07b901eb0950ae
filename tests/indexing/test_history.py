"""The accumulated shopper history (`indexing.history`): the offline computation over a
log equals the event-by-event fold the worker's script performs, its weights are the
decayed sums they stand for, and a model can only ask for what the state can serve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexing import (
    EVENT_TYPES,
    ItemHistory,
    ModelParams,
    Weighting,
    accumulated_histories,
    decay_term,
    item_weights,
    read_events,
    recent_item_weights,
)
from indexing.history import ACCUMULATED_HALF_LIVES, HISTORY_EPOCH, HistoryEntry

DAY = 86_400.0
NOW = 1_800_000_000.0
ITEMS = ("a", "b", "B", "c d", "é", "i10", "i9", "z")

events = st.lists(
    st.tuples(
        st.sampled_from(("u1", "u2", "u3")),
        st.sampled_from(ITEMS),
        st.sampled_from(EVENT_TYPES),
        st.integers(0, 30),  # days back, coarse: ties and disorder are common
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(stream=events, bound=st.integers(1, 6))
def test_offline_histories_equal_the_event_by_event_fold(
    stream: list[tuple[str, str, str, int]], bound: int
) -> None:
    rows = [
        {"event_id": str(n), "user_id": u, "item_id": i, "type": t, "ts": NOW - d * DAY}
        for n, (u, i, t, d) in enumerate(stream)
    ]
    log, _ = read_events(rows)
    folds: dict[str, ItemHistory] = {}
    for r in rows:
        folds.setdefault(r["user_id"], ItemHistory(bound)).add(r["item_id"], r["type"], r["ts"])
    state = accumulated_histories(log, bound)
    for half_life in ACCUMULATED_HALF_LIVES:
        weighting = Weighting(half_life_days=half_life)
        offline = state.weights(weighting, NOW)
        for user, fold in folds.items():
            ids, weights = fold.weights(NOW, weighting)
            codes, got = offline.get(
                log.user_ids.index(user), (np.zeros(0, np.intp), np.zeros(0, np.float32))
            )
            assert [log.item_ids[c] for c in codes.tolist()] == ids
            assert np.array_equal(got, np.array(weights, dtype=np.float32))


def test_weights_are_the_decayed_sums_of_every_event_when_nothing_was_evicted() -> None:
    stream = [("a", "view", 40.0), ("b", "purchase", 3.0), ("a", "add_to_cart", 1.5)]
    stream += [("c", "search", 0.5), ("b", "view", 200.0)]
    fold = ItemHistory(50)
    for item, type_, days in stream:
        fold.add(item, type_, NOW - days * DAY)
    for half_life in ACCUMULATED_HALF_LIVES:
        weighting = Weighting(half_life_days=half_life)
        ids, weights = fold.weights(NOW, weighting)
        # the live event-window view over every event: same items (the search weighs 0)
        expected = recent_item_weights(
            [(i, t, NOW - d * DAY) for i, t, d in stream], NOW, weighting
        )
        assert ids == expected[0] == ["a", "b"]
        assert weights == pytest.approx(expected[1], rel=1e-12)


def test_an_item_pushed_out_starts_again_from_zero() -> None:
    fold = ItemHistory(2)
    fold.add("a", "purchase", NOW - 3 * DAY)
    fold.add("b", "view", NOW - 2 * DAY)
    fold.add("c", "view", NOW - DAY)  # a is the least recent: it goes
    fold.add("a", "view", NOW)
    assert fold.weights(NOW, Weighting())[0] == ["a", "c"]
    assert fold.entries["a"].sums == {"view": [1.0, decay_term(NOW)]}


def test_ties_go_to_the_larger_id_first_as_redis_orders_them() -> None:
    fold = ItemHistory(2)
    for item in ("b", "é", "a"):
        fold.add(item, "view", NOW)
    # the least recent by (ts, id) goes: "a"; then "é" (after "b" in code point order)
    assert fold.weights(NOW, Weighting())[0] == ["é", "b"]


def test_decay_terms_stay_finite_for_centuries_either_side_of_the_epoch() -> None:
    for years in (-200, 0, 200):
        term = decay_term(HISTORY_EPOCH + years * 365.25 * DAY)
        assert 0 < term < float("inf")
    entry = HistoryEntry("a", NOW, {"view": [1.0, decay_term(NOW - 90 * DAY)]})
    assert item_weights([entry], NOW, Weighting(half_life_days=90.0), 5) == (
        ["a"],
        [pytest.approx(0.5, rel=1e-12)],
    )


def test_a_half_life_the_state_cannot_serve_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be read"):
        item_weights([], NOW, Weighting(half_life_days=30.0), 5)
    with pytest.raises(ValueError, match="history_half_life_days"):
        ModelParams(history_half_life_days=30.0)
    # a version read from the recent list may keep any half-life
    assert ModelParams(history_half_life_days=30.0, history_events=50).history_events == 50


def test_params_of_a_version_read_from_the_recent_list_keep_their_window() -> None:
    old = {**ModelParams().as_dict(), "history_events": 50}
    assert ModelParams.from_dict(old).history_events == 50
    assert ModelParams.from_dict(ModelParams().as_dict()).history_events is None


def test_a_shopper_whose_items_all_weigh_nothing_has_an_empty_history() -> None:
    """The evaluation looks every test shopper up (`served_rankings`); one whose train
    events weigh 0 (searches, removals) is there with no items, as in
    `shopper_histories`, not missing."""
    rows = [
        {"event_id": "1", "user_id": "u1", "item_id": "a", "type": "search", "ts": NOW - DAY},
        {"event_id": "2", "user_id": "u2", "item_id": "a", "type": "view", "ts": NOW - DAY},
    ]
    log, _ = read_events(rows)
    for half_life in ACCUMULATED_HALF_LIVES:
        got = accumulated_histories(log, 5).weights(Weighting(half_life_days=half_life), NOW)
        u1, u2 = log.user_ids.index("u1"), log.user_ids.index("u2")
        assert set(got) == {u1, u2}
        assert got[u1][0].size == got[u1][1].size == 0
        assert got[u2][0].tolist() == [log.item_ids.index("a")]


def test_the_evaluation_ranks_a_test_shopper_whose_history_weighs_nothing() -> None:
    from indexing import AlsParams, discovery_task, train_model
    from indexing.experiment import served_rankings
    from tests.indexing.conftest import DAY as C_DAY
    from tests.indexing.conftest import T0, planted_rows

    rows = planted_rows()
    # a shopper who only searched before the split, and bought a warm item after it
    rows.append({**rows[0], "event_id": "s1", "user_id": "searcher", "type": "search",
                 "ts": str(T0 + 10 * C_DAY)})  # fmt: skip
    bought = "b1-0" if rows[0]["item_id"] != "b1-0" else "b1-1"
    rows.append({**rows[0], "event_id": "s2", "user_id": "searcher", "type": "purchase",
                 "item_id": bought, "ts": str(T0 + 99.9 * C_DAY)})  # fmt: skip
    log, _ = read_events(rows)
    task = discovery_task(log)
    searcher = log.user_ids.index("searcher")
    assert searcher in task.users.tolist()
    model = train_model(task.train, ModelParams(als=AlsParams(factors=8, iterations=3)))
    ranked = served_rankings(task, model)  # raised KeyError: no entry for the searcher
    assert searcher in ranked


def test_a_version_from_before_history_events_with_a_half_life_the_state_cannot_serve_loads(
    tmp_path: Path,
) -> None:
    """Such a version (built by hand with another half-life) served from the recent list
    before the accumulated state; it still loads and serves so, not refused."""
    from indexing import AlsParams, load_index, save_model, train_model
    from tests.indexing.conftest import planted_rows

    params = ModelParams(
        als=AlsParams(factors=8, iterations=3), history_half_life_days=30.0, history_events=50
    )
    log, _ = read_events(planted_rows())
    version, _ = save_model(tmp_path, train_model(log, params))
    index = load_index(tmp_path, version)
    old = {k: v for k, v in index.manifest["params"].items() if k != "history_events"}
    assert ModelParams.from_dict(old).history_events == params.history_items
    index.manifest["params"] = old
    assert index.history_events == params.history_items
    # one the state can serve reads the accumulated history, as a version before the
    # field read every event
    for half_life in ACCUMULATED_HALF_LIVES:
        servable = {**old, "history_half_life_days": half_life}
        assert ModelParams.from_dict(servable).history_events is None
