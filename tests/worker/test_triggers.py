"""Which rules an event triggers, and when they are due."""

from __future__ import annotations

from typing import Any

from tests.clock import RUN_NOW
from worker.firing.triggers import Triggers
from worker.rules import Rule
from worker.service import ingest
from worker.service.runtime import Runtime
from worker.shoppers.catalog import ItemChange
from worker.shoppers.inputs import Limits, parse_event

NOW = RUN_NOW  # applied events reach the trending buckets, which Redis expires
DAY = 86_400.0


def rules(*extra: Rule) -> tuple[Rule, ...]:
    return extra


def apply(rt: Runtime, *raws: dict[str, Any]) -> list[Any]:
    events = [parse_event(r, Limits(), NOW) for r in raws]
    return rt.state.apply_events(events, NOW, "d").fresh


def ev(eid: str, type_: str, item: str, ts: float, user: str = "u1") -> dict[str, Any]:
    return {"event_id": eid, "user_id": user, "type": type_, "item_id": item, "ts": ts}


def test_browse_abandoned_needs_enough_views_in_one_category_and_no_cart(runtime: Runtime) -> None:
    ingest.upsert_items(runtime, [{"item_id": f"s{n}", "category": "shoes"} for n in range(4)], NOW)
    browse = Rule(
        name="browse",
        kind="browse_abandoned",
        min_views=3,
        window_s=3600,
        delay_s=600,
        title="t",
        body="b",
    )
    triggers = Triggers(runtime.redis, runtime.keys, rules(browse), max_age_s=3600)

    fresh = apply(runtime, ev("v1", "view", "s0", NOW - 300), ev("v2", "view", "s1", NOW - 200))
    assert triggers.for_events(fresh, NOW) == []
    fresh = apply(runtime, ev("v3", "view", "s2", NOW - 100))
    [trigger] = triggers.for_events(fresh, NOW)
    assert trigger.items == ("s2", "s1", "s0") and trigger.due == NOW + 600
    assert trigger.job().job_id == "browse:u1"  # one pending per shopper

    apply(runtime, ev("c1", "add_to_cart", "s3", NOW - 50))
    assert triggers.for_events(apply(runtime, ev("v4", "view", "s0", NOW - 10)), NOW) == []


def test_replenish_is_due_one_lead_before_the_next_expected_purchase(runtime: Runtime) -> None:
    again = Rule(name="again", kind="replenish", lead_s=int(DAY), title="t", body="b")
    triggers = Triggers(runtime.redis, runtime.keys, rules(again), max_age_s=3600)
    assert (
        triggers.for_events(apply(runtime, ev("p1", "purchase", "tea", NOW - 20 * DAY)), NOW) == []
    )
    # events older than the trigger age fire nothing, even the second purchase
    [trigger] = triggers.for_events(apply(runtime, ev("p2", "purchase", "tea", NOW - 60)), NOW)
    interval = NOW - 60 - (NOW - 20 * DAY)
    assert trigger.due == NOW - 60 + interval - DAY
    assert dict(trigger.extra)["interval_days"] == "20"


def test_the_lines_of_one_order_make_one_post_purchase_trigger(runtime: Runtime) -> None:
    thanks = Rule(name="thanks", kind="post_purchase", delay_s=86_400, title="t", body="b")
    triggers = Triggers(runtime.redis, runtime.keys, rules(thanks), max_age_s=3600)
    lines = [ev(f"p{n}", "purchase", item, NOW - 60) for n, item in enumerate(["a", "b", "a"])]
    later = ev("p9", "purchase", "c", NOW - 30)
    given = {**ev("g1", "purchase", "d", NOW - 60), "props": {"order_id": "A-17"}}
    other_shopper = ev("q1", "purchase", "a", NOW - 60, user="u2")
    found = triggers.for_events(apply(runtime, *lines, later, given, other_shopper), NOW)
    by_id = {(t.user_id, t.trigger_id): t for t in found}
    assert len(found) == len(by_id) == 4
    # lines of one second are one checkout: one trigger with every item, once
    order = by_id["u1", f"order@{NOW - 60:.0f}"]
    assert order.items == ("a", "b") and order.trigger_ts == NOW - 60
    assert order.job().job_id == f"thanks:u1:order@{NOW - 60:.0f}"
    assert by_id["u1", f"order@{NOW - 30:.0f}"].items == ("c",)
    assert by_id["u1", "order:A-17"].items == ("d",)  # the shop's own order id wins
    assert by_id["u2", f"order@{NOW - 60:.0f}"].items == ("a",)


def test_foreseen_triggers_are_those_the_applied_events_make_of_kinds_reading_nothing(
    runtime: Runtime,
) -> None:
    """`foreseen` makes, without a round trip, the triggers `for_events` makes of the
    same events for kinds that read nothing of the shopper (a purchase's cross-sell, a
    cart), and none of kinds that do (replenish reads the purchase history)."""
    thanks = Rule(name="thanks", kind="post_purchase", delay_s=0, title="t", body="b")
    cart = Rule(name="cart", kind="cart_abandoned", delay_s=60, title="t", body="b")
    again = Rule(name="again", kind="replenish", lead_s=int(DAY), title="t", body="b")
    triggers = Triggers(runtime.redis, runtime.keys, rules(thanks, cart, again), max_age_s=3600)
    apply(runtime, ev("p0", "purchase", "tea", NOW - 20 * DAY))
    raws = [
        ev("p1", "purchase", "tea", NOW - 60),
        ev("p2", "purchase", "cup", NOW - 60),  # the same order
        ev("c1", "add_to_cart", "pot", NOW - 30),
        ev("old", "purchase", "tea", NOW - 7200),  # too old to trigger
    ]
    foreseen = triggers.foreseen([parse_event(r, Limits(), NOW) for r in raws], NOW)
    applied = triggers.for_events(apply(runtime, *raws), NOW)
    assert [t.rule for t in applied] == ["thanks", "again", "cart"]
    assert foreseen == [t for t in applied if t.rule != "again"]


def test_old_events_update_state_but_trigger_nothing(runtime: Runtime) -> None:
    cart = Rule(name="cart", kind="cart_abandoned", delay_s=60, title="t", body="b")
    triggers = Triggers(runtime.redis, runtime.keys, rules(cart), max_age_s=3600)
    assert triggers.for_events(apply(runtime, ev("c1", "add_to_cart", "x", NOW - 7200)), NOW) == []
    [trigger] = triggers.for_events(apply(runtime, ev("c2", "add_to_cart", "x", NOW - 10)), NOW)
    assert trigger.due == NOW + 60


def test_price_drop_threshold_and_restock_edge(runtime: Runtime) -> None:
    drop = Rule(name="drop", kind="price_drop", min_drop_pct=10, title="t", body="b")
    stock = Rule(name="stock", kind="back_in_stock", title="t", body="b")
    triggers = Triggers(runtime.redis, runtime.keys, rules(drop, stock), max_age_s=3600)
    apply(runtime, ev("v1", "view", "x", NOW - 100), ev("v2", "view", "x", NOW - 100, user="u2"))
    changes = [
        ItemChange("x", "price", 10.0, 9.5, NOW),  # -5%: no
        ItemChange("x", "price", 10.0, 8.0, NOW),  # -20%: yes
        ItemChange("x", "stock", 0.0, 2.0, NOW),  # restock: yes
        ItemChange("x", "stock", 1.0, 2.0, NOW),  # more stock: no
    ]
    fired = sorted((t.rule, t.user_id) for t in triggers.for_item_changes(changes, NOW))
    assert fired == [("drop", "u1"), ("drop", "u2"), ("stock", "u1"), ("stock", "u2")]
