"""Segments on a real Redis: indexes written as events arrive, queries per shard, RFM
cut points, and the indexes' bounds (erasure, expiry)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.clock import RUN_NOW
from worker.segmenting.query import SegmentQuery
from worker.segmenting.rfm import compute_cuts
from worker.segments import Segment
from worker.service import ingest
from worker.service.runtime import Runtime
from worker.settings import Settings
from worker.store.keys import Keys

NOW = RUN_NOW
DAY = 86_400.0


def _event(user: str, type_: str, item: str, ts: float, **kw: Any) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "user_id": user, "type": type_, "item_id": item,
            "ts": ts, **kw}  # fmt: skip


def _shop(rt: Runtime) -> None:
    """Five shoppers: a big recent buyer, a lapsed regular, a one-off buyer, a browser with
    a cart left behind, and one with only a device."""
    ingest.upsert_items(rt, [
        {"item_id": "mug", "category": "home", "price": 10.0},
        {"item_id": "tee", "category": "fashion", "price": 20.0},
    ], NOW)  # fmt: skip
    events = [
        *(_event("big", "purchase", "mug", NOW - d * DAY, quantity=5) for d in (1, 3, 5)),
        *(_event("lapsed", "purchase", "tee", NOW - d * DAY) for d in (60, 45)),
        _event("once", "purchase", "mug", NOW - 10 * DAY),
        _event("browser", "view", "tee", NOW - 3 * DAY),
        _event("browser", "add_to_cart", "tee", NOW - 2 * DAY),
    ]
    # events older than the trigger age still update state (and the indexes)
    ingest.track(rt, events, NOW, "pushrec.track_batch", "d1")
    ingest.register_device(rt, {"user_id": "device_only", "channel": "webhook",
                                "token": "https://hooks.example/x"}, NOW)  # fmt: skip


def _query(rt: Runtime, *segments: Segment) -> SegmentQuery:
    return SegmentQuery(rt.redis, rt.keys, {s.name: s for s in segments})


def _members(rt: Runtime, segment: Segment, *others: Segment) -> set[str]:
    size, sample = _query(rt, segment, *others).size_and_sample(segment.name, NOW, 100)
    assert size == len(sample)
    return set(sample)


@pytest.fixture
def shop(settings: Settings) -> Runtime:
    settings = settings.model_copy(update={"destination_allowed_hosts": ["hooks.example"]})
    rt = Runtime.open(settings)
    _shop(rt)
    yield rt  # type: ignore[misc]
    rt.close()


def test_each_condition_selects_from_the_indexes(shop: Runtime) -> None:
    seg = Segment.model_validate
    assert _members(shop, seg({"name": "s", "min_orders": 2, "dormant_days": 30})) == {"lapsed"}
    assert _members(shop, seg({"name": "s", "never_purchased": True})) == {
        "browser", "device_only"}  # fmt: skip
    assert _members(shop, seg({"name": "s", "min_monetary": 100})) == {"big"}
    assert _members(shop, seg({"name": "s", "active_within_days": 7})) == {"big", "browser"}
    assert _members(shop, seg({"name": "s", "cart_abandoned": {"idle_hours": 24}})) == {
        "browser"}  # fmt: skip
    assert _members(shop, seg({"name": "s", "cart_abandoned": {"idle_hours": 72}})) == set()
    assert _members(shop, seg({"name": "s", "channel": "webhook"})) == {"device_only"}
    home = seg({"name": "s", "affinity": {"category": "home", "min_share": 0.5}})
    assert _members(shop, home) == {"big", "once"}


def test_combinations_all_any_not(shop: Runtime) -> None:
    seg = Segment.model_validate
    buyers = seg({"name": "buyers", "min_orders": 1})
    recent = seg({"name": "recent", "active_within_days": 7})
    carts = seg({"name": "carts", "cart_abandoned": {"idle_hours": 1}})
    both = seg({"name": "both", "all": ["buyers", "recent"]})
    either = seg({"name": "either", "any": ["carts", "buyers"], "not": "recent"})
    nobody_recent = seg({"name": "rest", "not": ["recent"]})
    assert _members(shop, both, buyers, recent) == {"big"}
    assert _members(shop, either, carts, buyers, recent) == {"lapsed", "once"}
    assert _members(shop, nobody_recent, recent) == {"lapsed", "once", "device_only"}


def test_rfm_cuts_are_the_quintiles_of_the_buyers(shop: Runtime) -> None:
    cuts = compute_cuts(shop.redis, shop.keys, NOW)
    assert cuts.buyers == 3
    assert cuts.f == (1.0, 1.0, 1.0, 2.0)  # orders 1, 2, 3: ranks 1, 1, 1, 2 (floor)
    top = Segment.model_validate({"name": "top", "rfm": {"r": [5, 5], "m": [5, 5]}})
    assert _members(shop, top) == {"big"}
    low = Segment.model_validate({"name": "low", "rfm": {"r": [1, 1]}})
    assert _members(shop, low) == {"lapsed"}


def test_quantiles_across_shards_equal_those_of_one_set(shop: Runtime) -> None:
    sharded = Keys(shop.keys.prefix + "x", shards=4)
    pipe = shop.redis.pipeline()
    for n in range(200):
        user = f"u{n}"
        pipe.zadd(sharded.segment_of(user).orders, {user: (n * 7919) % 37 + 1})
        pipe.zadd(sharded.segment_of(user).last_purchase, {user: NOW - n})
        pipe.zadd(sharded.segment_of(user).monetary, {user: n * 1.5})
    pipe.execute()
    values = sorted((n * 7919) % 37 + 1 for n in range(200))
    expected = tuple(float(values[int(q * 200) - 1]) for q in (0.2, 0.4, 0.6, 0.8))
    try:
        assert compute_cuts(shop.redis, sharded, NOW).f == expected
    finally:
        for n in range(4):
            shop.redis.delete(sharded.segment(n).orders, sharded.segment(n).last_purchase,
                              sharded.segment(n).monetary)  # fmt: skip
        shop.redis.delete(sharded.rfm_cuts)


def test_erasure_and_expiry_take_shoppers_out_of_every_index(shop: Runtime) -> None:
    seen = shop.keys.segment(0).seen
    assert shop.redis.zcard(seen) == 5
    report = ingest.erase_user(shop, "big")
    # last seen, last purchase, orders, money spent, the home share
    assert report["segment_entries_removed"] == 5
    assert shop.redis.zscore(seen, "big") is None
    removed = shop.segment_index.sweep_expired(NOW + 500 * DAY, shop.settings.user_ttl_s)
    assert removed == 4
    left = [k for k in shop.redis.scan_iter(f"{shop.keys.prefix}:{{seg:0}}:*")
            if shop.redis.type(k) == "zset" and shop.redis.zcard(k)]  # fmt: skip
    assert left == []
