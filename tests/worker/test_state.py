"""Shopper state on a real Redis: what each event changes, once."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis

from tests.clock import RUN_NOW
from tests.worker.sharded import log_entries, log_length
from worker.redis_urls import is_cluster_url
from worker.service import ingest
from worker.service.runtime import Runtime
from worker.service.userview import user_view
from worker.shoppers.inputs import Limits, parse_event
from worker.shoppers.state import APPLIED, DUPLICATE, RESUMED

pytestmark = pytest.mark.redis_kinds  # a single node and a cluster

NOW = RUN_NOW  # Redis expires trending buckets (EXPIREAT) by its own clock


def ev(
    event_id: str, type_: str, item: str | None = "sku-1", ts: float = NOW - 600, **kw: Any
) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "event_id": event_id,
        "user_id": kw.pop("user", "u1"),
        "type": type_,
        "ts": ts,
    }
    if item is not None:
        raw["item_id"] = item
    raw.update(kw)
    return raw


def apply(rt: Runtime, *raws: dict[str, Any], delivery: str | None = None) -> list[int]:
    events = [parse_event(r, Limits(), NOW) for r in raws]
    result = rt.state.apply_events(events, NOW, delivery or uuid.uuid4().hex)
    rt.state.react_and_confirm(result, lambda pipe, marks: False)
    return result.statuses


def view(rt: Runtime, user: str = "u1") -> dict[str, Any]:
    return user_view(rt.redis, rt.keys, user, NOW)


def trending_category(rt: Runtime, category: str, ts: float = NOW - 600) -> float | None:
    """`category`'s weight in the trending bucket of `ts` (`ev`'s default time)."""
    bucket = int(ts // rt.settings.trending_bucket_s)
    key = rt.keys.trending_categories(bucket, rt.keys.shard(category))
    return rt.redis.zscore(key, category)


def test_cart_purchase_and_rfm_follow_the_events(runtime: Runtime) -> None:
    ingest.upsert_items(runtime, [{"item_id": "sku-1", "category": "mugs", "price": 4.0}], NOW)
    apply(
        runtime,
        ev("e1", "view"),
        ev("e2", "add_to_cart", quantity=3),
        ev("e3", "remove_from_cart", quantity=1),
        ev("e4", "add_to_cart", item="sku-2", ts=NOW - 500),
    )
    state = view(runtime)
    assert {c["item_id"]: c["quantity"] for c in state["cart"]} == {"sku-1": 2, "sku-2": 1}

    apply(runtime, ev("e5", "purchase", quantity=2, ts=NOW - 100))
    state = view(runtime)
    assert [c["item_id"] for c in state["cart"]] == ["sku-2"]
    assert state["purchases"] == [{"item_id": "sku-1", "last_at": NOW - 100, "count": 1}]
    # monetary falls back to the catalog price when the event has none: 2 x 4.0
    assert state["rfm"] == {"recency_days": 100 / 86_400, "frequency": 1, "monetary": 8.0}
    assert state["profile"]["events"] == 5
    assert state["profile"]["last_seen"] == NOW - 100
    assert [r["type"] for r in state["recent"]][:2] == ["purchase", "add_to_cart"]
    assert list(state["category_affinity"]) == ["mugs"]


def test_an_event_takes_its_items_category_and_price_from_the_catalog_as_it_applies(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The category (whatever JSON makes of its characters) goes in the recent entry,
    the affinity and the trending counters; the catalog's price counts where the event
    names none. A single node's script reads them itself, in the state's one round
    trip; a cluster's caller reads them first."""
    category = 'Küche / "Töpfe" \\ ✓'
    ingest.upsert_items(runtime, [{"item_id": "pot", "category": category, "price": 7.5}], NOW)
    trips: list[int] = []
    real = type(runtime.redis.pipeline()).execute

    def execute(pipe: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(len(pipe))
        return real(pipe, *args, **kwargs)

    monkeypatch.setattr(type(runtime.redis.pipeline()), "execute", execute)
    events = [
        parse_event(ev("e1", "purchase", item="pot", quantity=2), Limits(), NOW),
        parse_event(ev("e2", "purchase", item="pot", price=1.25), Limits(), NOW),
        parse_event(ev("e3", "view", item="unknown"), Limits(), NOW),
    ]
    result = runtime.state.apply_events(events, NOW, "d1", carry_side_effects=True)
    assert len(trips) == (2 if is_cluster_url(str(runtime.settings.redis_url)) else 1)
    monkeypatch.undo()
    runtime.state.react_and_confirm(result, lambda pipe, marks: False)  # the side effects
    state = view(runtime)
    assert [r.get("category") for r in state["recent"]] == [None, category, category]
    assert state["rfm"]["monetary"] == 2 * 7.5 + 1.25
    assert list(state["category_affinity"]) == [category]
    assert trending_category(runtime, category) == 10.0  # two purchases
    assert runtime.redis.ttl(runtime.keys.item("pot").item) == -1  # the catalog never expires


def test_recent_items_are_capped(runtime: Runtime) -> None:
    cap = runtime.settings.recent_items_max
    apply(
        runtime, *[ev(f"e{i}", "view", item=f"sku-{i}", ts=NOW - 1000 + i) for i in range(cap + 5)]
    )
    recent = view(runtime)["recent"]
    assert len(recent) == cap
    assert recent[0]["item_id"] == f"sku-{cap + 4}"


def test_duplicate_event_ids_are_applied_once(runtime: Runtime) -> None:
    statuses = apply(runtime, ev("e1", "add_to_cart"), ev("e1", "add_to_cart"))
    assert statuses == [APPLIED, DUPLICATE]
    assert apply(runtime, ev("e1", "add_to_cart")) == [DUPLICATE]
    assert view(runtime)["cart"][0]["quantity"] == 1
    assert log_length(runtime) == 1
    assert runtime.metrics.snapshot()["events.duplicate"] == 2


def test_every_valid_event_reaches_the_interaction_log(runtime: Runtime) -> None:
    apply(
        runtime,
        ev("e1", "view", user="a"),
        ev("e2", "search", item=None, query="red mug", user="b"),
    )
    rows = log_entries(runtime)
    # One batch logs within one millisecond; across cluster shards such entries have no
    # order among them, so compare them as a set.
    assert sorted((r["event_id"], r["user_id"], r["type"], r["item_id"]) for r in rows) == [
        ("e1", "a", "view", "sku-1"),
        ("e2", "b", "search", ""),
    ]


def test_trending_counts_recent_item_activity(runtime: Runtime) -> None:
    ingest.upsert_items(runtime, [{"item_id": "hot", "category": "c"}], NOW)
    apply(
        runtime,
        ev("e1", "view", item="hot", ts=NOW - 60),
        ev("e2", "purchase", item="hot", ts=NOW - 30),
        ev("e3", "view", item="cool", ts=NOW - 30),
        ev("e4", "view", item="old", ts=NOW - 90 * 86_400),  # far outside the kept buckets
    )
    assert runtime.state.trending_items(NOW, hours=24, count=5) == [("hot", 6.0), ("cool", 1.0)]


def test_event_applied_before_a_crash_has_its_side_effects_redone(runtime: Runtime) -> None:
    ingest.upsert_items(runtime, [{"item_id": "sku-1", "category": "mugs"}], NOW)
    raw = ev("e1", "view")
    # Step 1 alone, as if the worker died before the log/trending pipeline ran.
    event = parse_event(raw, Limits(), NOW)
    pipe = runtime.redis.pipeline()
    runtime.state._queue_state_update(pipe, event, ("", ""), NOW, "delivery-1")
    assert pipe.execute() == [[APPLIED, ""]]
    assert log_length(runtime) == 0

    # A copy of the event in another message is a duplicate; the redelivery finishes it.
    assert apply(runtime, raw, delivery="delivery-2") == [DUPLICATE]
    assert log_length(runtime) == 0
    assert apply(runtime, raw, delivery="delivery-1") == [RESUMED]
    assert log_length(runtime) == 1
    # the script answers the item's category on a resume too: its trending is redone
    assert trending_category(runtime, "mugs") == 1.0
    assert view(runtime)["profile"]["events"] == 1  # state itself was not applied twice
    assert apply(runtime, raw, delivery="delivery-1") == [DUPLICATE]


def test_a_reminder_that_fails_to_park_leaves_its_event_pending(runtime: Runtime) -> None:
    """The cart reminder the state Redis refuses to park (here a wrong type; out of
    memory, or a cluster node failing apart from the shopper's, alike) fails the task
    before the event's pending mark is cleared, so the redelivery parks it."""
    raw = ev("e1", "add_to_cart")
    jobs = [runtime.keys.delayed(shard).jobs for shard in runtime.keys.all_shards]
    for key in jobs:
        runtime.redis.set(key, "not a hash")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        ingest.track(runtime, [raw], NOW, "pushrec.track", "delivery-1")

    runtime.redis.delete(*jobs)
    ingest.track(runtime, [raw], NOW, "pushrec.track", "delivery-1")  # the redelivery
    assert [k for k in jobs if runtime.redis.hexists(k, "cart_abandoned:u1")]
    assert apply(runtime, raw, delivery="delivery-1") == [DUPLICATE]  # confirmed this time


def test_bad_events_are_rejected_and_the_rest_of_the_batch_applied(runtime: Runtime) -> None:
    batch = [ev("e1", "view"), {"event_id": "e2"}, "junk", ev("e3", "add_to_cart")]
    summary = ingest.track_batch(runtime, batch, NOW, "d")
    assert summary == {"applied": 2, "duplicates": 0, "rejected": 2}
    kept = runtime.rejected.recent(10)
    assert {r["code"] for r in kept} == {"missing_field", "not_an_object"}
    assert json.loads(next(r for r in kept if r["code"] == "not_an_object")["payload"]) == "junk"
    metrics = runtime.metrics.snapshot()
    assert metrics["pushrec.track_batch.rejected"] == 2
    assert metrics["events.applied"] == 2


def test_entries_beyond_the_batch_limit_are_kept_not_dropped(runtime: Runtime) -> None:
    limit = runtime.limits.batch_max_events
    batch = [ev(f"e{i}", "view", ts=NOW - 1000 + i) for i in range(limit + 3)]
    summary = ingest.track_batch(runtime, batch, NOW, "d")
    assert summary == {"applied": limit, "duplicates": 0, "rejected": 3}
    overflow = runtime.rejected.recent(10)
    assert [json.loads(r["payload"])["event_id"] for r in overflow] == [
        f"e{limit + 2}",
        f"e{limit + 1}",
        f"e{limit}",
    ]
