"""Every Redis key that grows with input stays within its bound (`worker/store/keys.py`,
"Growth and bounds"); one test per bound not checked beside its feature elsewhere."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.clock import RUN_NOW
from tests.worker.sharded import log_length
from worker.delivery.outbox import MESSAGE_TTL_S, MessageRecord
from worker.service import ingest
from worker.service.runtime import Runtime
from worker.settings import Settings
from worker.shoppers.contacts import MAX_DEVICES_PER_USER

NOW = RUN_NOW
DAY = 86_400.0


@pytest.fixture
def small(settings: Settings) -> Iterator[Runtime]:
    """A runtime with the smallest caps the settings allow."""
    rt = Runtime.open(
        settings.model_copy(
            update={
                "cart_max_items": 5,
                "interaction_log_maxlen": 1000,
                "rejected_log_maxlen": 100,
                "decisions_kept": 3,
            }
        )
    )
    yield rt
    rt.close()


def _event(n: int, user: str, type_: str, item: str, ts: float) -> dict[str, Any]:
    return {"event_id": f"e{n}", "user_id": user, "type": type_, "item_id": item, "ts": ts}


def _window_s(rt: Runtime) -> float:
    return max(rule.interest_days for rule in rt.settings.rules) * DAY


def test_an_item_interest_set_keeps_only_the_interest_window_on_write(runtime: Runtime) -> None:
    key = runtime.keys.interested("i1")
    window = _window_s(runtime)
    runtime.redis.zadd(key, {f"old{n}": NOW - window - DAY for n in range(1000)})
    runtime.redis.zadd(key, {"recent": NOW - window + DAY})

    ingest.track_one(runtime, _event(1, "new", "view", "i1", NOW), NOW, "d")

    assert sorted(runtime.redis.zrange(key, 0, -1)) == ["new", "recent"]


def test_a_shoppers_interest_index_keeps_only_the_interest_window(runtime: Runtime) -> None:
    window = _window_s(runtime)
    old = [_event(n, "u", "view", f"old{n}", NOW - window - DAY) for n in range(3)]
    ingest.track_batch(runtime, [*old, _event(9, "u", "add_to_cart", "i9", NOW)], NOW, "d")

    assert runtime.redis.zrange(runtime.keys.user("u").interests, 0, -1) == ["i9"]


def test_a_cart_keeps_the_most_recently_added_items_up_to_its_cap(small: Runtime) -> None:
    events = [_event(n, "u", "add_to_cart", f"unknown-{n}", NOW - 100 + n) for n in range(8)]
    ingest.track_batch(small, events, NOW, "d")

    k = small.keys.user("u")
    newest = [f"unknown-{n}" for n in range(3, 8)]
    assert small.redis.zrange(k.cart_added, 0, -1) == newest
    assert sorted(small.redis.hkeys(k.cart)) == newest


def test_a_cart_filled_before_the_cap_is_cut_down_on_its_next_add(small: Runtime) -> None:
    """10,000 items (more than Lua's unpack() takes at once) from before the cap existed."""
    k = small.keys.user("u")
    small.redis.zadd(k.cart_added, {f"old-{n}": NOW - 10_000 + n for n in range(10_000)})
    small.redis.hset(k.cart, mapping={f"old-{n}": 1 for n in range(10_000)})

    summary = ingest.track_batch(small, [_event(0, "u", "add_to_cart", "new", NOW)], NOW, "d")

    assert summary["applied"] == 1
    kept = ["old-9996", "old-9997", "old-9998", "old-9999", "new"]
    assert small.redis.zrange(k.cart_added, 0, -1) == kept
    assert sorted(small.redis.hkeys(k.cart)) == sorted(kept)


def test_a_shoppers_message_index_keeps_only_what_messages_live(runtime: Runtime) -> None:
    def record(mid: str, created_at: float) -> MessageRecord:
        return MessageRecord(
            id=mid, rule="r", user_id="u", trigger_id=mid, items=["i"], title="t", body="b",
            purpose="marketing", channels=["fcm"], created_at=created_at,
        )  # fmt: skip

    runtime.outbox.create_many([record("m-old", NOW - MESSAGE_TTL_S - DAY)])
    runtime.outbox.create_many([record("m-new", NOW)])

    assert runtime.redis.zrange(runtime.keys.user("u").messages, 0, -1) == ["m-new"]


def test_devices_beyond_the_cap_are_evicted_with_their_owner_keys(runtime: Runtime) -> None:
    for n in range(MAX_DEVICES_PER_USER + 1):
        ingest.register_device(
            runtime, {"user_id": "u", "channel": "fcm", "token": f"tok-{n}", "ts": NOW + n}, NOW
        )

    devices = runtime.contacts.devices("u")
    assert len(devices) == MAX_DEVICES_PER_USER
    owners = list(runtime.redis.scan_iter(match=runtime.keys.device_owner("*")))
    assert len(owners) == MAX_DEVICES_PER_USER  # the evicted device's went with it


def test_decisions_are_capped(small: Runtime) -> None:
    for n in range(5):
        small.audit.record_decision("u", {"action": "suppress", "reason": str(n)})
    assert [d["reason"] for d in small.audit.decisions("u")] == ["4", "3", "2"]


def test_the_interaction_log_and_the_rejected_stream_are_capped(small: Runtime) -> None:
    for batch in range(4):
        events = [_event(batch * 500 + n, f"u{n}", "view", "i", NOW) for n in range(500)]
        ingest.track_batch(small, events, NOW, f"d{batch}")
    for n in range(400):
        small.rejected.record("t", "bad", "why", {"n": n})

    # MAXLEN ~ trims whole stream nodes (100 entries each): at most one node over
    # each shard's MAXLEN ~ trims whole stream nodes (100 entries each): at most one node over
    shards = small.keys.shards
    assert 1000 <= log_length(small) <= 1000 + 100 * shards
    assert 100 <= small.redis.xlen(small.keys.rejected_log) <= 200
