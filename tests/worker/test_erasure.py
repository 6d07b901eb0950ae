"""Erasure on a real Redis: a shopper who went every path leaves no trace, and work that
comes due after the erasure brings nothing back."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.worker.realtime import (
    Gateways,
    gateway_shop,
    register,
)
from tests.worker.sharded import delayed_sizes
from worker import contract
from worker.delivery.requests import DeliveryRequest
from worker.policy.contact import holdout_bucket
from worker.policy.jobs import FireJob
from worker.rules import DEFAULT_RULES
from worker.service import ingest
from worker.service.app import create_app
from worker.service.runtime import Runtime
from worker.service.scheduler import resend_stuck
from worker.settings import Settings

Queued = list[tuple[str, dict[str, Any]]]
_WEBPUSH_KEYS = {
    "p256dh": "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1Xbj"
    "hazAkj7I99e8QcYP7DkM",
    "auth": "tBHItJI5svbpez7KI4CCXg",
}


@pytest.fixture
def shop(
    settings: Settings, gateways: Gateways, tmp_path: Path
) -> Iterator[tuple[Runtime, Queued]]:
    """A runtime on the local FCM and Web Push gateways whose `enqueue` records (the test
    runs the tasks), keeping one decision per shopper: erasure must find older messages
    without them."""
    env = gateways.env
    queued: Queued = []
    with gateway_shop(
        settings, gateways, tmp_path / "index", lambda task, kwargs: queued.append((task, kwargs)),
        vapid_private_key=Path(env["PUSHREC_VAPID_PRIVATE_KEY"]),
        vapid_subject=env["PUSHREC_VAPID_SUBJECT"],
        cap_marketing_per_week=100,
        decisions_kept=1,
    ) as rt:  # fmt: skip
        yield rt, queued


def _treated(prefix: str) -> str:
    """A shopper id starting with `prefix` outside every default rule's holdout."""
    return next(
        uid
        for uid in (f"{prefix}{n}" for n in range(1000))
        if all(holdout_bucket(r.name, uid) >= r.holdout_pct for r in DEFAULT_RULES)
    )


def _track(rt: Runtime, uid: str, n: int, type_: str, now: float, **fields: Any) -> None:
    event = {"event_id": f"{uid}-{n}", "user_id": uid, "type": type_, "ts": now, **fields}
    ingest.track_one(rt, event, now, f"d-{uid}-{n}")


def _quiet_now(now: float) -> dict[str, str]:
    """Quiet hours (UTC) from an hour before `now` to an hour after."""
    start, end = time.gmtime(now - 3600), time.gmtime(now + 3600)
    return {"start": time.strftime("%H:%M", start), "end": time.strftime("%H:%M", end)}


def _everything_naming(client: redis.Redis, prefix: str, needles: set[str]) -> list[str]:
    """Every key under `prefix` whose name or content (any type, streams included)
    contains one of `needles`."""
    found = []
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        kind = client.type(key)
        if kind == "string":
            parts: list[Any] = [client.get(key)]
        elif kind == "hash":
            parts = list(client.hgetall(key).items())
        elif kind == "list":
            parts = list(client.lrange(key, 0, -1))
        elif kind == "set":
            parts = list(client.smembers(key))
        elif kind == "zset":
            parts = list(client.zrange(key, 0, -1))
        elif kind == "stream":
            parts = list(client.xrange(key))
        else:
            parts = [kind]
        text = f"{key} {parts!r} {json.dumps(parts, default=str)}"
        if any(needle in text for needle in needles):
            found.append(key)
    return found


def test_a_shopper_erased_after_every_path_leaves_no_trace_in_redis(
    shop: tuple[Runtime, Queued], gateways: Gateways
) -> None:
    rt, queued = shop
    uid = _treated("Zoë-")  # non-ASCII: stored raw in some places, JSON-escaped in others
    bystander = _treated("stays-")
    now = time.time()
    # devices (FCM token, Web Push subscription) and preferences
    register(rt, uid, "fcm", gateways.targets["fcm"], now)
    register(rt, bystander, "fcm", "bystander-token-" + "x" * 20, now)
    # events: interest sets, cart, purchases, the delayed cart and post-purchase rules
    for n, (type_, item) in enumerate(
        [("view", "b0-1"), ("add_to_cart", "b0-2"), ("purchase", "b0-3")]
    ):
        _track(rt, uid, n, type_, now, item_id=item)
    _track(rt, bystander, 0, "view", now, item_id="b0-1")
    assert delayed_sizes(rt)[2] >= 2
    # a firing deferred to the end of quiet hours
    ingest.set_preferences(rt, {"user_id": uid, "quiet_hours": _quiet_now(now)}, now)
    [deferred] = rt.firer().fire_many(
        [FireJob("post_purchase", uid, "t-defer", now, ("b0-3",), {})], now
    )
    assert deferred["action"] == "defer", deferred
    ingest.set_preferences(rt, {"user_id": uid, "quiet_hours": None}, now + 1)
    # a message sent, retried on FCM (parked in the delayed set), opened, converted
    [fired] = rt.firer().fire_many(
        [FireJob("post_purchase", uid, "t-sent", now, ("b0-3",), {})], now + 1
    )
    assert fired["action"] == "queued", fired
    mid = fired["message_id"]
    gateways.script("fcm", [{"status": 503, "retry_after": "60"}])
    [sent] = rt.sender().deliver_many([DeliveryRequest(mid)], now + 2)
    assert sent["action"] == "retrying", sent
    # a Web Push subscription (after the send: the local gateway is not https)
    subscription = {"endpoint": "https://push.example/send/zoe", "keys": _WEBPUSH_KEYS}
    ingest.register_device(
        rt, {"user_id": uid, "channel": "webpush", "subscription": subscription}, now + 2
    )
    _track(rt, uid, 3, "push_open", now + 3, push_id=mid)
    _track(rt, uid, 4, "purchase", now + 4, item_id=fired["candidates"][0]["item_id"])
    # a later decision pushes the sent message's out of the (capped) decisions list
    _track(rt, uid, 5, "view", now + 5, item_id="b0-4")
    rt.firer().fire_many([FireJob("browse_abandoned", uid, "t-late", now, (), {})], now + 5)
    assert mid not in json.dumps(rt.audit.decisions(uid))
    # rejections: a bad event, a bad device, two bad calls (a contract and an internal one)
    _track(rt, uid, 6, "teleport", now)
    ingest.register_device(rt, {"user_id": uid, "channel": "apns", "token": "not-hex"}, now)
    app = create_app(rt.settings)
    try:
        app.tasks[contract.SET_PREFERENCES].apply(kwargs={"user_id": uid, "colour": "red"})
        app.tasks[contract.FIRE].apply(kwargs={"user_id": uid, "rule": "post_purchase"})
    finally:
        app.close_runtime()
    codes = [e["code"] for e in rt.rejected.recent(10)]
    assert sorted(codes) == ["bad_call", "bad_call", "invalid_field", "unknown_type"]
    # a call parked in the dead-letter stream after too many deliveries
    rt.dead_letters.park(
        contract.TRACK, "t-dead", "worker lost", {"kwargs": {"event": {"user_id": uid}}}, 6
    )
    needles = {uid, json.dumps(uid)[1:-1]}
    assert len(_everything_naming(rt.redis, rt.keys.prefix, needles)) > 20
    assert rt.redis.exists(rt.keys.user(uid).history, rt.keys.user(uid).history_sums) == 2

    report = ingest.erase_user(rt, uid)

    assert _everything_naming(rt.redis, rt.keys.prefix, needles) == []
    assert not needles & set(json.dumps(report).split('"'))  # the result backend keeps it
    assert report["log_entries_removed"] == {"interactions": 6, "rejected": 4, "dead_letters": 1}
    assert report["messages_removed"] == 1  # the one sent: no decision names it any more
    assert rt.redis.zscore(rt.keys.outbox_queued(rt.keys.shard(mid)), mid) is None
    assert rt.redis.zrange(rt.keys.interested("b0-1"), 0, -1) == [bystander]
    assert rt.contacts.devices(bystander)
    assert queued  # the run did enqueue deliveries: they find their records gone


def test_rejected_entries_are_found_by_the_id_as_stored_whatever_its_spelling(
    runtime: Runtime,
) -> None:
    """The stream keeps payloads with non-ASCII text unescaped and integer ids as
    integers; erasure takes an id as stored (a string) and still finds them."""
    for user_id in ("Zoë", 17850, " 17850 "):
        runtime.rejected.record("t", "bad", "why", {"event": {"user_id": user_id, "type": "x"}})
    runtime.rejected.record("t", "bad", "why", {"event": {"user_id": "178500"}})

    erased = ingest.erase_user(runtime, "Zoë")["log_entries_removed"]
    assert erased == {"interactions": 0, "rejected": 1, "dead_letters": 0}
    erased = ingest.erase_user(runtime, 17850)["log_entries_removed"]
    assert erased == {"interactions": 0, "rejected": 2, "dead_letters": 0}
    [left] = runtime.rejected.recent(10)
    assert json.loads(left["users"]) == ["178500"]


def test_a_deferred_firing_claimed_before_the_erasure_brings_nothing_back(
    shop: tuple[Runtime, Queued], gateways: Gateways
) -> None:
    rt, _ = shop
    uid = _treated("late-")
    now = time.time()
    register(rt, uid, "fcm", gateways.targets["fcm"], now)
    _track(rt, uid, 0, "add_to_cart", now, item_id="b0-2")
    [claimed] = rt.delayed.claim_due(now + 86_400)  # the scheduler took it: on its way

    ingest.erase_user(rt, uid)
    [decision] = rt.firer().fire_many([FireJob.from_kwargs(claimed.job.kwargs)], now + 86_400)

    assert decision["action"] == "dropped"
    assert _everything_naming(rt.redis, rt.keys.prefix, {uid}) == []


def test_erasure_takes_pending_jobs_and_queued_messages_off_their_sets(
    shop: tuple[Runtime, Queued], gateways: Gateways
) -> None:
    rt, _ = shop
    uid, other = _treated("pending-"), _treated("other-")
    now = time.time()
    for user in (uid, other):
        register(rt, user, "fcm", f"fcm-token-{user}-{'x' * 20}", now)
        _track(rt, user, 0, "purchase", now, item_id="b0-2")  # post_purchase, due tomorrow
    [fired] = rt.firer().fire_many([FireJob("post_purchase", uid, "t", now, ("b0-2",), {})], now)
    assert fired["action"] == "queued", fired["reason"]
    mid = fired["message_id"]
    assert rt.outbox.stuck(now + 600, older_than_s=300) == [mid]

    report = ingest.erase_user(rt, uid)

    assert report["delayed_jobs_removed"] == 1
    assert [c.job.kwargs["user_id"] for c in rt.delayed.claim_due(now + 86_400)] == [other]
    assert rt.outbox.stuck(now + 1200, older_than_s=300) == []


def test_a_queued_message_whose_record_is_gone_leaves_the_resend_sweep(
    shop: tuple[Runtime, Queued], gateways: Gateways
) -> None:
    """A record that expired (or was erased by an older version) can never be delivered:
    the first delivery that meets it takes it off the queued set, or the sweeper would
    re-send it forever."""
    rt, queued = shop
    uid = _treated("expired-")
    now = time.time()
    register(rt, uid, "fcm", gateways.targets["fcm"], now)
    _track(rt, uid, 0, "purchase", now, item_id="b0-2")
    [fired] = rt.firer().fire_many([FireJob("post_purchase", uid, "t", now, ("b0-2",), {})], now)
    mid = fired["message_id"]
    rt.redis.delete(rt.keys.message(mid).record)
    queued.clear()

    assert resend_stuck(rt.outbox, lambda t, k: queued.append((t, k)), older_than_s=0) == 1
    [outcome] = rt.sender().deliver_many(DeliveryRequest.from_kwargs(queued[0][1]), now)

    assert outcome["action"] == "missing"
    assert resend_stuck(rt.outbox, lambda t, k: queued.append((t, k)), older_than_s=0) == 0
