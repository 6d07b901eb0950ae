"""Opens, clicks and purchases are credited to messages and rules, once each."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from worker.delivery.outbox import MessageRecord
from worker.service import ingest
from worker.service.runtime import Runtime

NOW = time.time()


def queued(rt: Runtime, mid: str, user: str, items: list[str]) -> None:
    rt.outbox.create_many(
        [
            MessageRecord(
                id=mid,
                rule="r",
                user_id=user,
                trigger_id="t",
                items=items,
                title="t",
                body="b",
                purpose="marketing",
                channels=["fcm"],
                created_at=NOW,
            )
        ]
    )
    rt.audit.remember_items(user, items, mid, "r", "treated", NOW)


def track(rt: Runtime, eid: str, user: str, type_: str, **kw: object) -> None:
    ingest.track_one(
        rt, {"event_id": eid, "user_id": user, "type": type_, "ts": NOW + 5, **kw}, NOW + 10, "d"
    )


def test_open_click_and_purchase_with_push_id_count_once(runtime: Runtime) -> None:
    queued(runtime, "m1", "u1", ["a"])
    track(runtime, "o1", "u1", "push_open", push_id="m1")
    track(runtime, "o2", "u1", "push_open", push_id="m1")  # a second open: still one
    track(runtime, "c1", "u1", "push_click", push_id="m1")
    track(runtime, "b1", "u1", "purchase", item_id="zzz", push_id="m1")
    stats = runtime.audit.stats(["r"])["r"]
    assert (stats["opened"], stats["clicked"], stats["converted"]) == (1, 1, 1)


def test_purchase_of_a_pushed_item_without_push_id_is_attributed_in_the_window(
    runtime: Runtime,
) -> None:
    queued(runtime, "m2", "u2", ["a", "b"])
    runtime.audit.remember_items("u3", ["a"], "m3", "r", "holdout", NOW)
    track(runtime, "b2", "u2", "purchase", item_id="b")
    track(runtime, "b3", "u3", "purchase", item_id="a")
    track(runtime, "b4", "u2", "purchase", item_id="not-pushed")
    stats = runtime.audit.stats(["r"])["r"]
    assert (stats["converted"], stats["held_out_converted"]) == (1, 1)


def test_a_push_id_of_another_shoppers_message_credits_nothing(runtime: Runtime) -> None:
    queued(runtime, "m4", "u4", ["a"])
    track(runtime, "x1", "u5", "push_open", push_id="m4")
    track(runtime, "x2", "u5", "push_click", push_id="m4")
    track(runtime, "x3", "u5", "purchase", item_id="a", push_id="m4")
    stats = runtime.audit.stats(["r"])["r"]
    assert (stats["opened"], stats["clicked"], stats["converted"]) == (0, 0, 0)
    assert runtime.audit.outcomes("m4") == {}
    assert runtime.metrics.snapshot()["attribution.ignored.other_shopper"] == 3

    track(runtime, "o4", "u4", "push_open", push_id="m4")  # its own shopper's open counts
    assert runtime.audit.stats(["r"])["r"]["opened"] == 1


def test_attribution_reads_ride_on_the_round_trip_that_applies_the_events(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An open names its message: reading it costs the event no round trip of its own."""
    sends = 0
    original = redis.connection.AbstractConnection.send_packed_command

    def counted(conn: Any, command: Any, check_health: bool = True) -> None:
        nonlocal sends
        sends += 1
        original(conn, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    track(runtime, "s1", "u4", "search", query="mugs")
    search, sends = sends, 0
    track(runtime, "o4", "u4", "push_open", push_id="m-unknown")
    assert sends == search
    assert runtime.metrics.snapshot()["events.applied"] == 2
