"""Choosing a message's items from a candidate pool: filters, diversity, trigger items."""

from __future__ import annotations

from tests.clock import FIXED_NOW
from worker.firing.recommend import ShopperView, candidate_pool, choose

NOW = FIXED_NOW  # scoring and parsing never meet a real clock


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
