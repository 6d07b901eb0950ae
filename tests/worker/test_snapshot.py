"""The one reader of a shopper's state: each part read as asked, in one round trip."""

from __future__ import annotations

import uuid

from tests.clock import RUN_NOW
from worker.service import ingest
from worker.service.runtime import Runtime
from worker.shoppers.inputs import Limits, parse_event
from worker.shoppers.snapshot import ShopperReads

NOW = RUN_NOW  # applied events reach the trending buckets, which Redis expires


def apply(rt: Runtime, *events: tuple[str, str, str, float]) -> None:
    raws = [
        {"event_id": eid, "user_id": "u1", "type": type_, "item_id": item, "ts": ts}
        for eid, type_, item, ts in events
    ]
    result = rt.state.apply_events(
        [parse_event(r, Limits(), NOW) for r in raws], NOW, uuid.uuid4().hex
    )
    rt.state.react_and_confirm(result, lambda pipe, marks: False)


def test_each_part_is_read_as_asked_and_the_rest_stays_empty(runtime: Runtime) -> None:
    ingest.upsert_items(runtime, [{"item_id": "a", "category": "mugs"}], NOW)
    apply(
        runtime,
        ("e1", "add_to_cart", "a", NOW - 300),
        ("e2", "purchase", "b", NOW - 200),
        ("e3", "purchase", "b", NOW - 100),
        ("e4", "purchase", "c", NOW - 50),
    )
    reads = ShopperReads.of("cart", "purchase_history", items=["b", "zzz"])
    shopper = reads.read(runtime.redis, runtime.keys, "u1")
    assert shopper.cart_added == {"a": NOW - 300} and shopper.cart == {}
    assert shopper.purchase_counts == {"b": 2} and shopper.first_purchases == {"b": NOW - 200}
    assert shopper.recent == [] and shopper.purchases == {} and shopper.devices == {}

    since = ShopperReads.of("purchases", since=NOW - 60).read(runtime.redis, runtime.keys, "u1")
    assert since.purchases == {"c": NOW - 50}
    everything = ShopperReads.of("purchases", "cart_quantities", "recent")
    shopper = everything.read(runtime.redis, runtime.keys, "u1")
    assert shopper.purchases == {"b": NOW - 100, "c": NOW - 50} and shopper.cart == {"a": 1}
    assert [r["type"] for r in shopper.recent] == [
        "purchase",
        "purchase",
        "purchase",
        "add_to_cart",
    ]


def test_reads_of_many_shoppers_share_one_pipeline(runtime: Runtime) -> None:
    apply(runtime, ("e1", "view", "a", NOW - 10))
    reads = ShopperReads.of("recent", "devices")
    pipe = runtime.redis.pipeline(transaction=False)
    for user in ("u1", "nobody"):
        reads.queue(pipe, runtime.keys, user)
    replies = iter(pipe.execute())
    first, second = reads.parse("u1", replies), reads.parse("nobody", replies)
    assert [r["item_id"] for r in first.recent] == ["a"] and second.recent == []
    assert next(replies, None) is None


def test_the_history_read_takes_its_two_keys_and_the_reads_after_it_theirs(
    runtime: Runtime,
) -> None:
    """`history` is one read of two keys (`read_shopper.lua`): the reads queued after it
    still get their own keys and replies, in one call; a shopper without one reads empty."""
    apply(
        runtime,
        ("e1", "view", "a", NOW - 300),
        ("e2", "add_to_cart", "b", NOW - 200),
        ("e3", "view", "a", NOW - 100),
    )
    reads = ShopperReads.of("recent", "history", "cart", "purchases", "preferences")
    pipe = runtime.redis.pipeline(transaction=False)
    for user in ("u1", "nobody"):
        reads.queue(pipe, runtime.keys, user)
    replies = pipe.execute()
    assert len(replies) == 2  # one script call a shopper
    shopper = reads.parse("u1", iter(replies[:1]))
    assert [(e.item_id, e.last_ts) for e in shopper.history] == [("a", NOW - 100), ("b", NOW - 200)]
    assert shopper.history[0].sums["view"][0] == 2.0
    assert list(shopper.history[1].sums) == ["add_to_cart"]
    assert shopper.cart_added == {"b": NOW - 200} and shopper.purchases == {}
    assert [r["item_id"] for r in shopper.recent] == ["a", "b", "a"]
    nobody = reads.parse("nobody", iter(replies[1:]))
    assert nobody.history == [] and nobody.cart_added == {} and nobody.recent == []
