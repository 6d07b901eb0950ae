"""The rule-kind table: one entry per kind, each with one trigger source and its checks."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

from tests.clock import FIXED_NOW
from worker.policy.kinds import KINDS
from worker.rules import Rule, RuleKind
from worker.shoppers.snapshot import Shopper

NOW = FIXED_NOW  # the checks are pure
DOCS = Path(__file__).parents[2] / "docs" / "realtime.md"


def rule(kind: str) -> Rule:
    return Rule(name="r", kind=kind, title="t", body="b")  # type: ignore[arg-type]


def test_every_rule_kind_has_one_entry_and_one_trigger_source() -> None:
    assert set(KINDS) == set(get_args(RuleKind))
    for kind in KINDS.values():
        from_events = bool(kind.events) and kind.on_event is not None
        from_segment = kind.name == "campaign"  # fired by campaign runs (worker/campaigning/)
        sources = [from_events, kind.on_change is not None, kind.on_issue, from_segment]
        assert sources.count(True) == 1, kind.name


def test_every_kind_is_documented_in_the_kinds_table() -> None:
    rows = [line for line in DOCS.read_text().splitlines() if line.startswith("| `")]
    assert {row.split("`")[1] for row in rows} >= set(KINDS)


def test_buying_the_item_cancels_an_item_message_at_send_time_but_not_a_taste_message() -> None:
    bought = {"a"}
    assert KINDS["price_drop"].holds_at_send(["a", "b"], bought) == "bought in the meantime"
    assert KINDS["cart_abandoned"].holds_at_send(["a", "b"], bought) == "bought in the meantime"
    assert KINDS["post_purchase"].holds_at_send(["a", "b"], bought) == ""
    assert KINDS["post_purchase"].holds_at_send(["a"], bought) == "bought in the meantime"


def test_cart_reminder_offers_what_is_left_in_the_cart_newest_first() -> None:
    cart = Shopper("u", cart_added={"old": NOW - 500, "new": NOW - 100})
    holds = KINDS["cart_abandoned"].holds_at_fire
    assert holds(rule("cart_abandoned"), NOW - 600, ("old",), cart) == (["new", "old"], "")
    # "new" was bought (a purchase takes its item out of the cart): "old" is still waiting
    part_bought = Shopper(
        "u",
        recent=[{"ts": NOW - 50, "type": "purchase", "item_id": "new"}],
        cart_added={"old": NOW - 500},
    )
    assert holds(rule("cart_abandoned"), NOW - 600, ("old",), part_bought) == (["old"], "")
    # buying something else changes nothing
    other = Shopper(
        "u",
        recent=[{"ts": NOW - 50, "type": "purchase", "item_id": "elsewhere"}],
        cart_added={"old": NOW - 500, "new": NOW - 100},
    )
    assert holds(rule("cart_abandoned"), NOW - 600, ("old",), other) == (["new", "old"], "")
    all_bought = Shopper("u", recent=[{"ts": NOW - 50, "type": "purchase", "item_id": "old"}])
    assert holds(rule("cart_abandoned"), NOW - 600, ("old",), all_bought) == (
        [],
        "cart bought since the trigger",
    )
    # the purchase applied before the add it came after (two workers): bought all the same
    late_add = Shopper(
        "u", purchases={"old": NOW - 50}, cart_added={"old": NOW - 500, "new": NOW - 100}
    )
    assert holds(rule("cart_abandoned"), NOW - 600, ("old",), late_add) == (["new"], "")
    removed = Shopper(
        "u",
        recent=[{"ts": NOW - 50, "type": "remove_from_cart", "item_id": "new"}],
        cart_added={"old": NOW - 500},
    )
    assert holds(rule("cart_abandoned"), NOW - 600, ("old",), removed)[0] == []
    assert holds(rule("cart_abandoned"), NOW - 600, (), Shopper("u")) == ([], "cart is empty")


def test_an_item_rule_no_longer_holds_once_its_item_was_bought_after_the_trigger() -> None:
    holds = KINDS["back_in_stock"].holds_at_fire
    shopper = Shopper("u", purchases={"x": NOW - 10})
    assert holds(rule("back_in_stock"), NOW - 60, ("x",), shopper) == ([], "bought since")
    assert holds(rule("back_in_stock"), NOW - 5, ("x",), shopper) == (["x"], "")
