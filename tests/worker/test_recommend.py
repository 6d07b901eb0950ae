"""Choosing a message's items from a candidate pool: filters, diversity, trigger items."""

from __future__ import annotations

from pathlib import Path

from indexing import (
    AlsParams,
    HistoryEntry,
    LoadedIndex,
    ModelParams,
    decay_term,
    item_weights,
    load_index,
    read_events,
    save_model,
    train_model,
)
from tests.clock import FIXED_NOW
from tests.indexing.conftest import planted_rows
from worker.firing.recommend import ShopperView, candidate_pool, choose

NOW = FIXED_NOW  # scoring and parsing never meet a real clock
DAY = 86_400.0


def item(category: str, stock: str = "5") -> dict[str, str]:
    return {"title": category.upper(), "category": category, "stock": stock}


def test_bought_in_cart_and_out_of_stock_items_are_never_offered() -> None:
    shopper = ShopperView(recent=[], purchased=frozenset({"a"}), cart=frozenset({"b"}))
    trending = [(i, 10.0 - n) for n, i in enumerate("abcde")]
    pool = candidate_pool(None, shopper, k=3, now=NOW, trending=lambda: trending)
    facts = {"a": item("x"), "b": item("x"), "c": item("x", stock="0"), "d": item("y")}
    chosen = choose(None, pool, facts, k=3)
    # "e" is unknown to the catalog: skipped like the others
    assert [c.item_id for c in chosen] == ["d"]
    assert chosen[0].reason == "popular right now"


def test_one_category_fills_at_most_its_share() -> None:
    shopper = ShopperView(recent=[], purchased=frozenset(), cart=frozenset())
    trending = [(f"s{n}", 100.0 - n) for n in range(5)] + [("t0", 1.0)]
    facts = {f"s{n}": item("shoes") for n in range(5)} | {"t0": item("socks")}
    pool = candidate_pool(None, shopper, k=3, now=NOW, trending=lambda: trending)
    chosen = choose(None, pool, facts, k=3, max_category_share=0.67)
    assert [c.item_id for c in chosen] == ["s0", "s1", "t0"]


def test_an_item_rule_offers_its_own_items_first_and_the_cart_when_it_is_about_it() -> None:
    shopper = ShopperView(recent=[], purchased=frozenset(), cart=frozenset({"c1"}))
    pool = candidate_pool(
        None, shopper, k=2, now=NOW, trigger_items=["c1"], allow_cart=True,
        trending=lambda: [("p1", 5.0), ("c1", 4.0)],
    )  # fmt: skip
    chosen = choose(None, pool, {"c1": item("x"), "p1": item("y")}, k=2, include_trigger_items=True)
    assert [(c.item_id, c.source) for c in chosen] == [("c1", "trigger"), ("p1", "trending")]


def test_a_head_of_the_pool_chooses_from_its_best_candidates_only() -> None:
    shopper = ShopperView(recent=[], purchased=frozenset(), cart=frozenset())
    trending = [(f"i{n}", 10.0 - n) for n in range(6)]
    pool = candidate_pool(None, shopper, k=2, now=NOW, trending=lambda: trending)
    facts = {f"i{n}": item(f"c{n}", stock="0" if n < 2 else "5") for n in range(6)}
    assert pool.head(2).item_ids() == ["i0", "i1"]
    assert choose(None, pool.head(2), facts, k=2) == []  # both sold out: read further
    assert [c.item_id for c in choose(None, pool.head(4), facts, k=2)] == ["i2", "i3"]


def _index(store: Path, params: ModelParams) -> LoadedIndex:
    log, _ = read_events(planted_rows())
    version, _ = save_model(store, train_model(log, params))
    return load_index(store, version)


def test_the_model_reads_the_accumulated_history_not_the_recent_list(tmp_path: Path) -> None:
    index = _index(tmp_path, ModelParams(als=AlsParams(factors=8, iterations=5)))
    assert index.history_events is None
    history = [
        HistoryEntry("b1-2", NOW - DAY, {"view": [3.0, decay_term(NOW - DAY) * 3]}),
        HistoryEntry("b1-1", NOW - 40 * DAY, {"purchase": [1.0, decay_term(NOW - 40 * DAY)]}),
    ]
    # the recent list names other items: it no longer feeds the model
    recent = [{"item_id": "b0-1", "type": "view", "ts": NOW}]
    shopper = ShopperView(recent, frozenset(), frozenset(), history)
    pool = candidate_pool(index, shopper, k=3, now=NOW)
    ids, weights = item_weights(history, NOW, index.history_weighting, index.history_items)
    assert pool.history == ids == ["b1-2", "b1-1"]
    model = [c.item_id for c in pool.candidates if c.source == "model"]
    assert model == [i for i, _ in index.recommend(ids, weights, k=len(model))]
    assert all(i.startswith("b1-") for i in model[:3])


def test_a_version_built_on_the_latest_events_reads_the_recent_list(tmp_path: Path) -> None:
    index = _index(tmp_path, ModelParams(als=AlsParams(factors=8, iterations=5), history_events=2))
    recent = [
        {"item_id": "b0-1", "type": "view", "ts": NOW},
        {"item_id": "b0-2", "type": "view", "ts": NOW - 1},
        {"item_id": "b1-1", "type": "view", "ts": NOW - 2},  # beyond the version's window
    ]
    history = [HistoryEntry("b2-1", NOW, {"view": [1.0, decay_term(NOW)]})]
    pool = candidate_pool(
        index, ShopperView(recent, frozenset(), frozenset(), history), k=3, now=NOW
    )
    assert pool.history == ["b0-1", "b0-2"]
