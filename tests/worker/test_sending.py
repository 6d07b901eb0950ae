"""Send-time re-checks and device handling, in-process against the local gateways."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis

from tests.clock import RUN_NOW
from tests.worker.realtime import (
    Gateways,
    gateway_shop,
    planted_catalog,
    register,
    rule,
)
from worker.delivery.outbox import MessageRecord
from worker.delivery.requests import DeliveryRequest, FiringWrites, FreshMessage
from worker.firing.reads import FiringReader
from worker.firing.writes import FiringWriter
from worker.policy.contact import holdout_bucket
from worker.policy.jobs import FireJob
from worker.rules import Rule
from worker.service import ingest
from worker.service.runtime import Runtime
from worker.service.userview import decisions_view
from worker.settings import Settings
from worker.shoppers.contacts import device_id
from worker.shoppers.state import PendingMarks
from worker.store.pinned import PinnedPipeline


@pytest.fixture
def shop(
    settings: Settings, gateways: Gateways, tmp_path: Path
) -> Iterator[tuple[Runtime, list[tuple[str, dict[str, Any]]]]]:
    """A runtime whose `enqueue` records instead of sending (the test runs the tasks),
    with a published planted index."""
    queued: list[tuple[str, dict[str, Any]]] = []
    enqueue = lambda task, kwargs: queued.append((task, kwargs))  # noqa: E731
    with gateway_shop(settings, gateways, tmp_path / "index", enqueue) as rt:
        yield rt, queued


def fire_post_purchase(rt: Runtime, user: str, item: str, now: float | None = None) -> str:
    now = time.time() if now is None else now
    ingest.track_one(
        rt,
        {"event_id": f"p-{user}", "user_id": user, "type": "purchase", "item_id": item, "ts": now},
        now,
        "d",
    )
    job = FireJob(
        rule="post_purchase",
        user_id=user,
        trigger_id=f"p-{user}",
        trigger_ts=now,
        items=(item,),
        extra={},
    )
    [decision] = rt.firer().fire_many([job], now)
    assert decision["action"] in {"queued", "held_out"}, decision
    return str(decision["message_id"])


def test_consent_withdrawn_after_the_trigger_suppresses_at_send_time(
    shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, _ = shop
    user = shopper(rt, gateways, "c")
    mid = fire_post_purchase(rt, user, "b0-1")
    ingest.set_preferences(
        rt, {"user_id": user, "consent": {"marketing": {"*": False}}}, time.time() + 1
    )

    outcome = rt.sender().deliver_many([DeliveryRequest(mid)], time.time() + 2)[0]

    assert outcome == {"action": "suppressed", "reason": "consent withdrawn or no active device"}
    assert rt.outbox.state(mid)["state"] == "suppressed"
    assert gateways.accepted("fcm") == []


def test_item_bought_in_the_meantime_suppresses_an_item_rule(
    shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, queued = shop
    user = "buyer"
    register(rt, user, "fcm", gateways.targets["fcm"], time.time())
    now = time.time()
    ingest.track_one(
        rt,
        {"event_id": "v", "user_id": user, "type": "view", "item_id": "b2-2", "ts": now},
        now,
        "d",
    )
    ingest.upsert_items(rt, [{"item_id": "b2-2", "price": 1.0}], now)  # price drop fans out
    [decision] = rt.audit.decisions(user)  # fired at once, its delivery queued
    assert decision["action"] == "queued", decision
    assert ("pushrec.deliver", {"message_ids": [decision["message_id"]]}) in queued
    ingest.track_one(
        rt,
        {"event_id": "b", "user_id": user, "type": "purchase", "item_id": "b2-2", "ts": now + 1},
        now + 1,
        "d",
    )

    outcome = rt.sender().deliver_many([DeliveryRequest(decision["message_id"])], now + 2)[0]

    assert outcome["reason"] == "bought in the meantime"
    assert gateways.accepted("fcm") == []


def test_gateway_503_is_retried_later_from_the_delayed_set_and_sent_once(
    shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, _ = shop
    user = shopper(rt, gateways, "r")
    mid = fire_post_purchase(rt, user, "b3-1")
    gateways.script("fcm", [{"status": 503, "retry_after": "7"}])

    first = rt.sender().deliver_many([DeliveryRequest(mid)], time.time())[0]
    assert first["action"] == "retrying" and first["retry_after"] == pytest.approx(7, abs=1)
    assert rt.delayed.due_at(f"deliver:{mid}") is not None
    [claimed] = rt.delayed.claim_due(time.time() + 8)
    [second] = rt.sender().deliver_many(
        DeliveryRequest.from_kwargs(claimed.job.kwargs), time.time()
    )
    assert second["action"] == "sent"
    again = rt.sender().deliver_many([DeliveryRequest(mid)], time.time())[0]
    assert again["action"] == "settled"
    assert len(gateways.accepted("fcm")) == 1

    report = ingest.erase_user(rt, user)  # erasure takes the shopper's messages too
    assert report["messages_removed"] == 1
    assert rt.outbox.get(mid) is None


def shopper(
    rt: Runtime, gateways: Gateways, prefix: str, now: float | None = None, **prefs: Any
) -> str:
    """A shopper with an FCM device, outside the post-purchase holdout."""
    user = next(u for u in (f"{prefix}{n}" for n in range(100)) if not _held_out(u))
    register(rt, user, "fcm", gateways.targets["fcm"], time.time() if now is None else now, **prefs)
    return user


def _held_out(user: str, rule: str = "post_purchase") -> bool:
    from worker.rules import DEFAULT_RULES

    [pct] = [r.holdout_pct for r in DEFAULT_RULES if r.name == rule]
    return holdout_bucket(rule, user) < pct


def test_a_message_whose_deliver_task_was_lost_is_sent_again_by_the_sweeper(
    shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    from worker.service.scheduler import resend_stuck

    rt, queued = shop
    user = shopper(rt, gateways, "l")
    mid = fire_post_purchase(rt, user, "b1-1")
    queued.clear()  # the deliver task was lost with the broker message
    assert resend_stuck(rt.outbox, lambda t, k: queued.append((t, k)), older_than_s=0) == 1
    [(task, kwargs)] = queued
    assert (task, kwargs) == ("pushrec.deliver", {"message_ids": [mid]})
    assert rt.sender().deliver_many([DeliveryRequest(mid)], time.time())[0]["action"] == "sent"
    assert rt.outbox.stuck(time.time() + 1000, 0) == []  # settled: off the sweep


def test_a_batch_of_events_fires_together_and_one_deliver_task_settles_each_message(
    shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    """A price drop fans out to three shoppers: fired together, one deliver task for the
    three messages, whose results are per message: sent, suppressed at send time, and a
    device the gateway no longer knows."""
    rt, queued = shop
    users = [u for u in (f"batch{n}" for n in range(100)) if not _held_out(u, "price_drop")][:3]
    sent_to, withdrawn, gone = users
    now = time.time()
    tokens = {u: f"fcm-token-{u}-{'x' * 20}" for u in users}
    for user in users:
        register(rt, user, "fcm", tokens[user], now)
    gateways.unregister("fcm", tokens[gone])
    views = [
        {"event_id": f"v-{u}", "user_id": u, "type": "view", "item_id": "b2-2", "ts": now}
        for u in users
    ]
    ingest.track_batch(rt, views, now, "d")
    ingest.upsert_items(rt, [{"item_id": "b2-2", "price": 1.0}], now)
    [kwargs] = [k for task, k in queued if task == "pushrec.deliver"]
    mids = kwargs["message_ids"]
    assert len(mids) == 3 and len(set(mids)) == 3
    ingest.set_preferences(
        rt, {"user_id": withdrawn, "consent": {"marketing": {"*": False}}}, now + 1
    )

    outcomes = rt.sender().deliver_many(DeliveryRequest.from_kwargs(kwargs), now + 2)

    owners = [record.user_id for mid in mids if (record := rt.outbox.get(mid))]
    actions = {user: o["action"] for user, o in zip(owners, outcomes, strict=True)}
    assert actions == {sent_to: "sent", withdrawn: "suppressed", gone: "failed"}
    assert [r["message"]["token"] for r in gateways.accepted("fcm")] == [tokens[sent_to]]
    assert rt.contacts.devices(gone) and not any(
        d.get("active", True) for d in rt.contacts.devices(gone).values()
    )
    stats = rt.audit.stats(["price_drop"])["price_drop"]
    assert (stats["delivered"], stats["suppressed"], stats["failed"]) == (1, 1, 1)

    again = rt.sender().deliver_many(DeliveryRequest.from_kwargs(kwargs), now + 3)
    assert [o["action"] for o in again] == ["settled"] * 3
    assert rt.audit.stats(["price_drop"])["price_drop"]["delivered"] == 1


def test_when_the_best_candidates_are_sold_out_firing_reads_further_down_the_pool(
    shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, _ = shop
    user = shopper(rt, gateways, "s")
    sold_out = [i["item_id"] for i in planted_catalog() if i["category"] == "block0"]
    ingest.upsert_items(
        rt, [{"item_id": i, "stock": 0} for i in sold_out if i != "b0-1"], time.time()
    )
    mid = fire_post_purchase(rt, user, "b0-1")
    [decision] = [d for d in rt.audit.decisions(user) if d["message_id"] == mid]
    chosen = [c["item_id"] for c in decision["candidates"]]
    assert len(chosen) == 3 and not set(chosen) & set(sold_out)
    assert decision["index_version"] == rt.index.version is not None  # what ranked them


def test_one_failing_job_or_a_repeated_one_leaves_the_rest_of_the_batch_alone(
    shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, queued = shop
    users = [u for u in (f"j{n}" for n in range(100)) if not _held_out(u)][:2]
    now = time.time()
    for user in users:
        register(rt, user, "fcm", f"fcm-token-{user}-{'x' * 20}", now)
    good = FireJob("post_purchase", users[0], "t-good", now, ("b0-1",), {})
    broken = FireJob("price_drop", users[1], "t-broken", now, (), {})  # an item rule, no item

    results = rt.firer().fire_many([good, broken, good], now)

    assert [r["action"] for r in results] == ["queued", "error", "duplicate"]
    assert "IndexError" in results[1]["reason"]
    [kwargs] = [k for task, k in queued if task == "pushrec.deliver"]
    assert kwargs["message_ids"] == [results[0]["message_id"]]
    assert rt.audit.stats(["price_drop"])["price_drop"]["failed"] == 1

    mid = results[0]["message_id"]
    requests = [DeliveryRequest(mid), DeliveryRequest(mid)]
    assert [o["action"] for o in rt.sender().deliver_many(requests, now + 1)] == ["sent"] * 2
    assert len(gateways.accepted("fcm")) == 1


LONDON = ZoneInfo("Europe/London")
QUIET = {"quiet_hours": {"start": "21:30", "end": "08:00"}, "timezone": "Europe/London"}


def london(day: date, hh_mm: str) -> float:
    """An instant on `day` at wall time `hh_mm` in London."""
    return datetime.combine(day, dt_time.fromisoformat(hh_mm), LONDON).timestamp()


# Two days before the run: every instant below is in the past, in any season.
DAY = datetime.fromtimestamp(RUN_NOW, LONDON).date() - timedelta(days=2)
MORNING = london(DAY + timedelta(days=1), "08:00")  # the end of the night's quiet hours


def test_a_message_decided_before_quiet_hours_and_sent_inside_them_waits_for_their_end(
    shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, _ = shop
    decided, sent = london(DAY, "21:29"), london(DAY, "22:01")
    user = shopper(rt, gateways, "q", decided - 60, **QUIET)
    mid = fire_post_purchase(rt, user, "b0-1", decided)

    [outcome] = rt.sender().deliver_many([DeliveryRequest(mid)], sent)

    why = f"quiet hours until {MORNING:.0f}"
    assert outcome == {"action": "deferred", "reason": why, "defer_until": MORNING}
    assert gateways.accepted("fcm") == []
    assert rt.delayed.due_at(f"deliver:{mid}") == MORNING
    [decision] = [d for d in decisions_view(rt.audit, rt.outbox, user) if d.get("message_id")]
    delivery = decision["delivery"]  # what `pushrec user show` prints
    assert (delivery["state"]["state"], delivery["state"]["reason"]) == ("deferred", why)
    assert delivery["attempts"] == [{"at": sent, "attempt": 0, "deferred": why}]
    assert rt.audit.stats(["post_purchase"])["post_purchase"]["deferred"] == 1
    assert rt.metrics.snapshot()["delivery.deferred"] == 1
    assert rt.outbox.stuck(MORNING, 0) == []  # parked, not lost: the sweeper leaves it

    assert rt.delayed.claim_due(MORNING - 1) == []
    [due] = rt.delayed.claim_due(MORNING)
    [after] = rt.sender().deliver_many(DeliveryRequest.from_kwargs(due.job.kwargs), MORNING)
    [again] = rt.sender().deliver_many([DeliveryRequest(mid)], MORNING + 1)
    assert (after["action"], again["action"]) == ("sent", "settled")
    assert len(gateways.accepted("fcm")) == 1


def test_quiet_hours_set_after_the_decision_hold_the_message_at_send_time(
    shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, _ = shop
    decided = london(DAY, "20:00")
    user = shopper(rt, gateways, "p", decided - 60, timezone="Europe/London")
    mid = fire_post_purchase(rt, user, "b0-1", decided)
    ingest.set_preferences(rt, {"user_id": user, **QUIET}, decided + 60)

    [outcome] = rt.sender().deliver_many([DeliveryRequest(mid)], london(DAY, "23:00"))

    assert (outcome["action"], outcome["defer_until"]) == ("deferred", MORNING)
    assert gateways.accepted("fcm") == []


def test_a_retry_parked_into_quiet_hours_is_deferred_on_arrival_and_sent_once_after(
    shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, _ = shop
    first, parked_until = london(DAY, "20:00"), london(DAY, "23:00")
    user = shopper(rt, gateways, "t", first - 60, **QUIET)
    mid = fire_post_purchase(rt, user, "b0-1", first)
    gateways.script("fcm", [{"status": 503, "retry_after": str(int(parked_until - first))}])

    [busy] = rt.sender().deliver_many([DeliveryRequest(mid)], first)
    assert busy["action"] == "retrying"
    [retry] = rt.delayed.claim_due(parked_until)
    rt.delayed.ack_many([retry])
    [arrival] = rt.sender().deliver_many(
        DeliveryRequest.from_kwargs(retry.job.kwargs), parked_until
    )

    assert (arrival["action"], arrival["defer_until"]) == ("deferred", MORNING)
    assert gateways.accepted("fcm") == []
    [later] = rt.delayed.claim_due(MORNING)
    assert later.job.kwargs == retry.job.kwargs  # the same retry, to the same devices
    [after] = rt.sender().deliver_many(DeliveryRequest.from_kwargs(later.job.kwargs), MORNING)
    assert after["action"] == "sent"
    assert len(gateways.accepted("fcm")) == 1


def test_quiet_hours_do_not_hold_a_transactional_message_at_send_time(
    shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, _ = shop
    rules = tuple(
        r.model_copy(update={"purpose": "transactional"}) if r.name == "post_purchase" else r
        for r in rt.settings.rules
    )
    orders = Runtime.open(
        rt.settings.model_copy(update={"rules": rules}), enqueue=lambda task, kwargs: None
    )
    try:
        decided, sent = london(DAY, "21:29"), london(DAY, "22:01")
        user = shopper(orders, gateways, "o", decided - 60, **QUIET)
        mid = fire_post_purchase(orders, user, "b0-1", decided)

        [outcome] = orders.sender().deliver_many([DeliveryRequest(mid)], sent)
    finally:
        orders.close()

    assert outcome["action"] == "sent"
    assert len(gateways.accepted("fcm")) == 1


@pytest.mark.parametrize("guess", ["none", "every device", "stale"])
def test_a_device_now_registered_to_another_shopper_is_skipped_and_taken_off_the_list(
    shop: tuple[Runtime, list[Any]],
    gateways: Gateways,
    guess: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whether the owners are read with the re-check (the devices the firing saw, handed
    over with a message it just stored), partly, or after it (a deliver task)."""
    rt, _ = shop
    now = time.time()
    user = shopper(rt, gateways, "own", now)  # device: the FCM target token
    kept = f"fcm-token-kept-{'x' * 20}"
    register(rt, user, "fcm", kept, now)
    shared = device_id("fcm", gateways.targets["fcm"])
    rt.redis.delete(rt.keys.device_owner(shared))  # expired, as its TTL would have it
    register(rt, "someone-else", "fcm", gateways.targets["fcm"], now + 1)
    assert shared in rt.contacts.devices(user)  # no owner was left to move it from
    mid = fire_post_purchase(rt, user, "b0-1", now + 2)
    [(record, _)] = rt.outbox.load_many([mid])
    assert record is not None
    devices = {
        "none": None,
        "every device": (shared, device_id("fcm", kept)),
        "stale": (shared, "a-device-removed-since"),
    }[guess]
    fresh = None if devices is None else {mid: FreshMessage(record, devices)}
    owner_reads: list[set[str]] = []
    real_owners = rt.contacts.owners

    def owners(ids: list[str], pipe: Any) -> None:
        owner_reads.append(set(ids))
        real_owners(ids, pipe)

    monkeypatch.setattr(rt.contacts, "owners", owners)

    [outcome] = rt.sender().deliver_many([DeliveryRequest(mid)], now + 3, "task", fresh)

    # the owners the re-check's trip did not read come in a trip of their own
    both = {shared, device_id("fcm", kept)}
    assert (
        owner_reads
        == {
            "none": [set(), both],
            "every device": [both],
            "stale": [set(devices or ()), {device_id("fcm", kept)}],
        }[guess]
    )
    assert (outcome["action"], outcome["delivered"]) == ("sent", 1)
    assert [r["message"]["token"] for r in gateways.accepted("fcm")] == [kept]
    assert set(rt.contacts.devices(user)) == {device_id("fcm", kept)}
    assert shared in rt.contacts.devices("someone-else")
    skipped = [a for a in rt.outbox.attempts(mid) if "skipped" in a]
    assert skipped == [
        {
            "at": now + 3,
            "attempt": 0,
            "device_id": shared,
            "skipped": "registered to another shopper",
        }
    ]
    assert rt.metrics.snapshot()["delivery.moved_device"] == 1


def test_items_pushed_by_another_message_since_it_was_decided_are_not_pushed_again(
    shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, _ = shop
    now = time.time()
    user = shopper(rt, gateways, "n", now)
    first, second = (
        MessageRecord(
            id=f"m-{rule}", rule=rule, user_id=user, trigger_id="t", items=["b0-2", "b0-3"],
            title="t", body="b", purpose="marketing", channels=["fcm"], created_at=now,
        )
        for rule in ("post_purchase", "browse_abandoned")
    )  # fmt: skip
    rt.outbox.create_many([first, second])  # decided together: neither saw the other

    [sent] = rt.sender().deliver_many([DeliveryRequest(first.id)], now + 1)
    [repeat] = rt.sender().deliver_many([DeliveryRequest(second.id)], now + 2)

    assert sent["action"] == "sent"
    assert repeat == {
        "action": "suppressed",
        "reason": "no_repeat: every item was pushed by another message since",
    }
    assert len(gateways.accepted("fcm")) == 1


# --- where the messages a task queues are sent --------------------------------------
def _immediate_shop(
    settings: Settings, gateways: Gateways, tmp_path: Path, queued: list[Any], inline: bool
) -> Any:
    """`gateway_shop` with an immediate post-purchase rule and `deliver_inline`."""
    now_rule = Rule(**rule("post_purchase", "post_purchase", delay_s=0))
    return gateway_shop(
        settings, gateways, tmp_path / "index", lambda t, kw: queued.append((t, kw)),
        deliver_inline=inline, rules=(now_rule,),
    )  # fmt: skip


def _purchase_fired_by(rt: Runtime, user: str, task_id: str) -> dict[str, Any]:
    now = time.time()
    event = {"event_id": f"p-{user}", "user_id": user, "type": "purchase", "item_id": "b0-1"}
    ingest.track_one(rt, {**event, "ts": now}, now, task_id)
    [decision] = rt.audit.decisions(user)
    return decision


def test_a_worker_that_consumes_the_push_queue_sends_in_the_task_that_queued(
    settings: Settings, gateways: Gateways, tmp_path: Path
) -> None:
    queued: list[tuple[str, dict[str, Any]]] = []
    with _immediate_shop(settings, gateways, tmp_path, queued, inline=True) as rt:
        user = shopper(rt, gateways, "inline")
        decision = _purchase_fired_by(rt, user, "track-task-1")

        assert queued == []  # no deliver task
        assert rt.outbox.state(decision["message_id"])["state"] == "sent"
        [sent] = gateways.accepted("fcm")
        assert sent["message"]["data"]["pr_mid"] == decision["message_id"]


def test_an_inline_delivery_rechecks_with_the_firings_create_and_reads_nothing_again(
    settings: Settings, gateways: Gateways, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The re-check of a message the task just stored rides on the round trip of the
    firing's create; what it reads there still decides (consent withdrawn in between)."""
    queued: list[tuple[str, dict[str, Any]]] = []
    with _immediate_shop(settings, gateways, tmp_path, queued, inline=True) as rt:
        sender = rt.sender()
        read_alone: list[str] = []
        real = sender._queue_reread

        def reread(record: MessageRecord, devices: Any, pipe: Any) -> None:
            read_alone.append(record.id)
            real(record, devices, pipe)

        sent = _purchase_fired_by(rt, shopper(rt, gateways, "ahead"), "track-task-5")
        assert rt.outbox.state(sent["message_id"])["state"] == "sent"

        withdrawn = shopper(rt, gateways, "withdrawn")
        real_queue = sender.queue_recheck

        def withdraw_first(fresh: Any, pipe: Any) -> Any:
            # before the firing's create goes out: the re-check after it reads this
            ingest.set_preferences(
                rt, {"user_id": withdrawn, "consent": {"marketing": {"*": False}}}, time.time()
            )
            monkeypatch.setattr(sender, "_queue_reread", reread)
            return real_queue(fresh, pipe)

        monkeypatch.setattr(sender, "queue_recheck", withdraw_first)
        held = _purchase_fired_by(rt, withdrawn, "track-task-6")
        assert held["action"] == "queued"
        assert rt.outbox.state(held["message_id"])["state"] == "suppressed"
        assert read_alone == [held["message_id"]]  # queued once, with the create
        assert queued == [] and len(gateways.accepted("fcm")) == 1


def test_a_recheck_read_with_the_firings_create_that_fails_hands_the_messages_on(
    settings: Settings, gateways: Gateways, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error in the re-check's replies is delivery's: the firing's writes stand and
    the message goes to the push queue, as any failed inline delivery's does."""
    queued: list[tuple[str, dict[str, Any]]] = []
    with _immediate_shop(settings, gateways, tmp_path, queued, inline=True) as rt:
        sender = rt.sender()
        real_queue = sender.queue_recheck
        rt.redis.set("not-a-hash", "x")

        def failing_read(fresh: Any, pipe: Any) -> Any:
            take = real_queue(fresh, pipe)
            pipe.hget("not-a-hash", "f")  # WRONGTYPE, among the re-check's replies
            return take

        monkeypatch.setattr(sender, "queue_recheck", failing_read)
        decision = _purchase_fired_by(rt, shopper(rt, gateways, "failing"), "track-task-7")
        assert decision["action"] == "queued"  # the firing's writes landed all the same
        assert queued == [("pushrec.deliver", {"message_ids": [decision["message_id"]]})]
        assert rt.outbox.state(decision["message_id"])["state"] == "queued"
        assert rt.outbox.queued_count() == 1  # for the sweep, should the deliver task be lost
        assert gateways.accepted("fcm") == []


def test_firing_writes_stay_to_land_alone_when_what_goes_with_them_cannot_be_queued(
    shop: tuple[Runtime, list[Any]], key_prefix: str
) -> None:
    """A delivery that fails while queuing its caps and claims after the firing's writes
    (a bug, a bad rule) leaves the writes unsent and alone, for `land`."""
    rt, _ = shop
    pipe = rt.redis.pipeline(transaction=False)
    pipe.set(f"{key_prefix}:write", "landed")
    writes = FiringWrites(pipe)

    def broken(more: Any) -> None:
        more.set(f"{key_prefix}:claim", "taken")
        raise RuntimeError("a bad rule")

    with pytest.raises(RuntimeError):
        writes.run_with(broken)
    assert not writes.sent and rt.redis.get(f"{key_prefix}:write") is None
    writes.land()
    assert writes.sent and rt.redis.get(f"{key_prefix}:write") == "landed"
    assert rt.redis.get(f"{key_prefix}:claim") is None


def test_firing_writes_that_fail_with_an_inline_deliverys_claims_are_the_tasks_to_retry(
    settings: Settings, gateways: Gateways, tmp_path: Path
) -> None:
    """The firing's writes go in the round trip of the delivery's caps and claims; one
    that fails there raises out of the task (not handed to the push queue, nothing sent),
    and the task's retry records the decision and sends the message once."""
    queued: list[tuple[str, dict[str, Any]]] = []
    with _immediate_shop(settings, gateways, tmp_path, queued, inline=True) as rt:
        user = shopper(rt, gateways, "writes-fail")
        decisions = rt.keys.user(user).decisions
        rt.redis.set(decisions, "not a list")  # its LPUSH fails
        now = time.time()
        event = {"event_id": f"p-{user}", "user_id": user, "type": "purchase",
                 "item_id": "b0-1", "ts": now}  # fmt: skip
        with pytest.raises(redis.ResponseError):
            ingest.track_one(rt, event, now, "task-w")
        assert queued == [] and gateways.accepted("fcm") == []

        rt.redis.delete(decisions)
        ingest.track_one(rt, event, now, "task-w")  # the task, retried
        [decision] = rt.audit.decisions(user)
        assert decision["action"] == "queued" and decision["resumed"]
        [sent] = gateways.accepted("fcm")
        assert sent["message"]["data"]["pr_mid"] == decision["message_id"]
        assert queued == [] and rt.outbox.state(decision["message_id"])["state"] == "sent"


@pytest.mark.parametrize("event_type", ["purchase", "view"])
def test_side_effects_that_fail_leave_the_event_pending_whether_a_rule_fires_or_not(
    settings: Settings, gateways: Gateways, tmp_path: Path, event_type: str
) -> None:
    """An event's side effects ride on the firing's first round trip when its rule
    fires at once (a purchase here), and go alone before the pending mark otherwise (a
    view): either way a failed one leaves the event pending, and the task's retry
    writes it and fires once."""
    queued: list[tuple[str, dict[str, Any]]] = []
    with _immediate_shop(settings, gateways, tmp_path, queued, inline=True) as rt:
        user = shopper(rt, gateways, f"effects-{event_type}")
        log_key = rt.keys.interaction_log(rt.keys.shard(user))
        rt.redis.set(log_key, "not a stream")  # its XADD fails
        now = time.time()
        event = {"event_id": f"e-{user}", "user_id": user, "type": event_type,
                 "item_id": "b0-1", "ts": now}  # fmt: skip
        with pytest.raises(redis.ResponseError):
            ingest.track_one(rt, event, now, "task-e")
        pending = rt.keys.user(user).pending_events
        assert rt.redis.hkeys(pending) == [event["event_id"]]
        assert gateways.accepted("fcm") == []

        rt.redis.delete(log_key)
        assert ingest.track_one(rt, event, now, "task-e")["applied"] == 0  # resumed
        assert rt.redis.hkeys(pending) == []
        [entry] = rt.redis.xrange(log_key)
        assert entry[1]["event_id"] == event["event_id"]
        fired = 1 if event_type == "purchase" else 0
        assert len(gateways.accepted("fcm")) == fired and queued == []


def _trips(monkeypatch: pytest.MonkeyPatch, starting: str = "") -> list[list[tuple[str, str]]]:
    """From now on, each pinned pipeline run (a single node's round trips): its commands
    as (name, key); with `starting`, from the first holding that command on."""
    ran: list[list[tuple[str, str]]] = []
    real = PinnedPipeline.execute

    def execute(pipe: PinnedPipeline, raise_on_error: bool = True) -> list[Any]:
        commands = [(str(a[0]), str(a[1]) if len(a) > 1 else "") for a, _ in pipe.command_stack]
        if ran or not starting or any(name == starting for name, _ in commands):
            ran.append(commands)
        return real(pipe, raise_on_error)

    monkeypatch.setattr(PinnedPipeline, "execute", execute)
    return ran


def test_a_rule_due_at_once_fires_and_sends_on_round_trips_made_anyway(
    settings: Settings, gateways: Gateways, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A purchase's cross-sell is known before the purchase is applied: what firing it
    reads (its message's state, the shopper, the policy's counters) goes after the state
    script, in its round trip; the send-time re-check after the create, in its round
    trip; the firing's writes before the caps and claims, in theirs; then the settling.
    Nothing is read twice; the message is sent once."""
    queued: list[tuple[str, dict[str, Any]]] = []
    with _immediate_shop(settings, gateways, tmp_path, queued, inline=True) as rt:
        user = shopper(rt, gateways, "read-first")
        recorded = _trips(monkeypatch)
        decision = _purchase_fired_by(rt, user, "track-task-r")
        trips = [trip for trip in recorded if trip]
        message = rt.keys.message(decision["message_id"])
        shopper_keys = rt.keys.user(user)

        def trip_of(command: tuple[str, str]) -> list[int]:
            return [n for n, trip in enumerate(trips) if command in trip]

        # the first trip to start with a script is the state script's
        applying = next(n for n, trip in enumerate(trips) if trip[0][0] == "EVALSHA")
        [creating] = trip_of(("SET", message.record))
        assert trip_of(("HGET", message.state)) == [applying, creating]  # the read, the create's
        assert trip_of(("ZRANGEBYSCORE", shopper_keys.pushed_items)) == [applying, creating]
        [writing] = trip_of(("LPUSH", shopper_keys.decisions))
        assert writing == creating + 1
        assert [name for name, _ in trips[writing][-2:]] == ["EVALSHA", "EVALSHA"]  # cap, claim
        [settling] = trip_of(("HSETNX", message.state))[1:]  # after the create's
        assert settling == writing + 1 == len(trips) - 1
        assert decision["action"] == "queued" and len(gateways.accepted("fcm")) == 1


def test_reads_made_for_events_that_prove_repeats_are_not_used_to_fire_them(
    settings: Settings, gateways: Gateways, tmp_path: Path
) -> None:
    """A batch's rules are read for as if every event were new; an event applied before
    (here one whose firing found no device) fires nothing again, the new one fires."""
    queued: list[tuple[str, dict[str, Any]]] = []
    with _immediate_shop(settings, gateways, tmp_path, queued, inline=True) as rt:
        user = next(u for u in (f"repeat{n}" for n in range(100)) if not _held_out(u))
        now = time.time()
        old = {"event_id": f"old-{user}", "user_id": user, "type": "purchase",
               "item_id": "b0-1", "ts": now}  # fmt: skip
        ingest.track_one(rt, old, now, "task-1")
        [before] = rt.audit.decisions(user)
        assert before["action"] == "suppress"  # no device yet
        register(rt, user, "fcm", gateways.targets["fcm"], now)
        new = {
            **old,
            "event_id": f"new-{user}",
            "item_id": "b0-2",
            "ts": now + 1,
        }  # an order of its own
        summary = ingest.track_batch(rt, [old, new], now + 1, "task-2")
        assert summary["duplicates"] == 1
        decisions = rt.audit.decisions(user)
        assert [d for d in decisions if d["message_id"] == before["message_id"]] == [before]
        [sent] = gateways.accepted("fcm")
        assert sent["message"]["data"]["pr_mid"] != before["message_id"]


@pytest.mark.parametrize("settling", ["lands", "fails"])
def test_an_inline_delivery_clears_the_events_pending_marks_with_its_settling(
    settings: Settings, gateways: Gateways, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    settling: str,
) -> None:  # fmt: skip
    """The marks of the events whose firing an inline delivery sent go in its settling's
    round trip (the firing's writes have landed by then), not in one of their own, and
    not before; a settling that fails may clear them all the same (a pipeline's command
    fails alone), and the task clears them again after handing the message to the push
    queue."""
    queued: list[tuple[str, dict[str, Any]]] = []
    with _immediate_shop(settings, gateways, tmp_path, queued, inline=True) as rt:
        user = shopper(rt, gateways, f"marks-{settling}")
        pending = rt.keys.user(user).pending_events
        marked: list[list[Any]] = []  # each pipeline the marks went in: its commands then
        still_pending: list[Any] = []  # the event's marks then
        real_queue = PendingMarks.queue

        def queue(marks: PendingMarks, pipe: Any) -> None:
            marked.append([args[0] for args, _ in pipe.command_stack])
            still_pending.append(rt.redis.hkeys(pending))
            real_queue(marks, pipe)

        monkeypatch.setattr(PendingMarks, "queue", queue)
        if settling == "fails":
            rt.redis.set("not-a-hash", "x")

            def failing(observed: Any, pipe: Any) -> None:
                pipe.hset("not-a-hash", "f", "v")  # WRONGTYPE: the settling raises

            monkeypatch.setattr(rt.metrics, "observe_latency", failing)
        decision = _purchase_fired_by(rt, user, "track-task-m")
        assert still_pending[0] == [f"p-{user}"]  # nothing cleared them before the settling
        assert rt.redis.hkeys(pending) == []
        assert len(gateways.accepted("fcm")) == 1
        if settling == "lands":
            [commands] = marked  # once, after the settling's own writes
            assert "HSETNX" in commands and queued == []
            assert rt.outbox.state(decision["message_id"])["state"] == "sent"
        else:
            [in_settling, alone] = marked  # the settling's try, then the task's own trip
            assert "HSETNX" in in_settling and alone == []
            assert queued == [("pushrec.deliver", {"message_ids": [decision["message_id"]]})]


def _after_claiming(monkeypatch: pytest.MonkeyPatch, sender: Any, meanwhile: Any) -> None:
    """`meanwhile()` runs after `sender` claims its devices, before it sends: what
    another process does to the message between a delivery's load and its settling."""
    real_claim = sender._reserve_and_claim

    def claim(*args: Any) -> Any:
        capped = real_claim(*args)
        meanwhile()
        return capped

    monkeypatch.setattr(sender, "_reserve_and_claim", claim)


def test_a_first_delivery_is_counted_and_its_items_noted_in_the_settlings_round_trip(
    shop: tuple[Runtime, list[Any]], gateways: Gateways, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt, _ = shop
    user = shopper(rt, gateways, "count-ahead")
    mid = fire_post_purchase(rt, user, "b0-1")
    ran = _trips(monkeypatch, starting="HSETNX")  # the settling's, then any after it
    [outcome] = rt.sender().deliver_many([DeliveryRequest(mid)], time.time(), "task")
    assert outcome["action"] == "sent"
    [settling] = ran  # nothing follows it
    stats, pushed = rt.keys.rule_stats("post_purchase"), rt.keys.user(user).pushed_items
    hsetnx = settling.index(("HSETNX", rt.keys.message(mid).state))
    assert settling.index(("HINCRBY", stats)) > hsetnx  # counted after it, in its trip
    assert ("ZADD", pushed) in settling
    assert rt.audit.stats(["post_purchase"])["post_purchase"]["delivered"] == 1
    record = rt.outbox.get(mid)
    assert record is not None and set(rt.redis.zrange(pushed, 0, -1)) == set(record.items)


def test_a_message_another_delivery_took_first_is_counted_back_down(
    shop: tuple[Runtime, list[Any]], gateways: Gateways, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted ahead of its first-delivery reply, a message whose first delivery was
    another's (between this one's load and its settling) is counted back down after it:
    the other delivery counts it."""
    rt, _ = shop
    user = shopper(rt, gateways, "count-back")
    mid = fire_post_purchase(rt, user, "b0-1")
    sender = rt.sender()
    state = rt.keys.message(mid).state
    _after_claiming(monkeypatch, sender, lambda: rt.redis.hsetnx(state, "delivered_at", "1"))
    ran = _trips(monkeypatch, starting="HSETNX")  # the settling's, then any after it
    [outcome] = sender.deliver_many([DeliveryRequest(mid)], time.time(), "task")
    assert outcome["action"] == "sent" and len(gateways.accepted("fcm")) == 1
    [_, back] = ran
    assert back == [("HINCRBY", rt.keys.rule_stats("post_purchase"))]
    assert rt.audit.stats(["post_purchase"])["post_purchase"]["delivered"] == 0


@pytest.mark.parametrize(
    "failures",
    [("landed",), ("landed", "landed"), ("refused",), ("refused", "refused")],
    ids="-".join,
)
def test_a_settling_retried_counts_the_message_once(
    shop: tuple[Runtime, list[Any]],
    gateways: Gateways,
    monkeypatch: pytest.MonkeyPatch,
    failures: tuple[str, ...],
) -> None:
    """The settling's tries fail with the connection: after their writes landed (the
    reply lost) or before (refused). However many landed, the message is counted
    once: the first try counts ahead, a later one counts only a first delivery its own
    reply proves. (A first try refused and a second landed leaves it uncounted: the third
    try's reply cannot tell that second try from another delivery.)"""
    rt, _ = shop
    user = shopper(rt, gateways, "count-once")
    mid = fire_post_purchase(rt, user, "b0-1")
    real = PinnedPipeline.execute
    failing = list(failures)

    def execute(pipe: PinnedPipeline, raise_on_error: bool = True) -> list[Any]:
        if not any(args[0] == "HSETNX" for args, _ in pipe.command_stack) or not failing:
            return real(pipe, raise_on_error)
        if failing.pop(0) == "landed":
            real(pipe, raise_on_error)
        else:
            pipe.reset()
        raise redis.ConnectionError("Connection closed by server.")

    monkeypatch.setattr(PinnedPipeline, "execute", execute)
    monkeypatch.setattr(time, "sleep", lambda s: None)  # `_patiently`'s waits
    [outcome] = rt.sender().deliver_many([DeliveryRequest(mid)], time.time(), "task")
    assert not failing and outcome["action"] == "sent" and len(gateways.accepted("fcm")) == 1
    assert rt.audit.stats(["post_purchase"])["post_purchase"]["delivered"] == 1


def test_a_message_loaded_as_delivered_is_counted_when_its_reply_proves_it_first(
    shop: tuple[Runtime, list[Any]], gateways: Gateways, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not counted ahead (its state said delivered when loaded), a message whose
    first-delivery reply says it is the first after all (that state gone since) is
    counted after the reply."""
    rt, _ = shop
    user = shopper(rt, gateways, "count-late")
    mid = fire_post_purchase(rt, user, "b0-1")
    state = rt.keys.message(mid).state
    rt.redis.hset(state, "delivered_at", "1")
    sender = rt.sender()
    _after_claiming(monkeypatch, sender, lambda: rt.redis.hdel(state, "delivered_at"))
    ran = _trips(monkeypatch, starting="HSETNX")  # the settling's, then any after it
    [outcome] = sender.deliver_many([DeliveryRequest(mid)], time.time(), "task")
    assert outcome["action"] == "sent"
    [settling, late] = ran
    assert ("HINCRBY", rt.keys.rule_stats("post_purchase")) not in settling
    assert ("HINCRBY", rt.keys.rule_stats("post_purchase")) in late
    assert rt.audit.stats(["post_purchase"])["post_purchase"]["delivered"] == 1


@pytest.mark.parametrize("read_first", [False, True], ids=["read", "read-first"])
@pytest.mark.parametrize("rule_name", ["post_purchase", "no-such-rule"])
def test_a_firing_sends_its_callers_writes_whatever_it_does(
    shop: tuple[Runtime, list[Any]], gateways: Gateways, key_prefix: str, rule_name: str,
    read_first: bool, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """`fire_many(ahead=...)` sends the caller's writes whatever it does next: with its
    read, or, with the reads made already (`read_first`), with the create or alone with
    the writes when nothing is created (a rule gone); an error among them raises before
    any decision is recorded."""
    rt, _ = shop
    user = shopper(rt, gateways, f"ahead-{rule_name}-{read_first}")
    if read_first:  # the reads made already are used, not made again

        def read_again(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("read again")

        monkeypatch.setattr(FiringReader, "read", read_again)

    def fire(job: FireJob, ahead: Any) -> None:
        now = time.time()
        reads = rt.firer().read_first([job], now) if read_first else None
        if reads is not None:
            pipe = rt.redis.pipeline(transaction=False)
            reads.queue(pipe)
            reads.take(iter(pipe.execute()))
        rt.firer().fire_many([job], now, "task", ahead=ahead, read=reads)

    job = FireJob(rule=rule_name, user_id=user, trigger_id=f"t-{user}",
                  trigger_ts=time.time(), items=("b0-1",), extra={})  # fmt: skip
    ahead = rt.redis.pipeline(transaction=False)
    ahead.set(f"{key_prefix}:ahead", "landed")
    fire(job, ahead)
    assert rt.redis.get(f"{key_prefix}:ahead") == "landed" and len(ahead) == 0
    sent = 1 if rule_name == "post_purchase" else 0
    assert len(rt.audit.decisions(user)) == sent

    rt.redis.set(f"{key_prefix}:str", "x")
    failing = rt.redis.pipeline(transaction=False)
    failing.hset(f"{key_prefix}:str", "f", "v")  # WRONGTYPE
    again = dataclasses.replace(job, trigger_id=f"t2-{user}")
    with pytest.raises(redis.ResponseError):
        fire(again, failing)
    assert len(rt.audit.decisions(user)) == sent  # nothing recorded


def test_a_worker_without_the_push_queue_hands_messages_to_deliver_tasks(
    settings: Settings, gateways: Gateways, tmp_path: Path
) -> None:
    queued: list[tuple[str, dict[str, Any]]] = []
    with _immediate_shop(settings, gateways, tmp_path, queued, inline=False) as rt:
        user = shopper(rt, gateways, "queued")
        decision = _purchase_fired_by(rt, user, "track-task-2")

        assert queued == [("pushrec.deliver", {"message_ids": [decision["message_id"]]})]
        assert rt.outbox.state(decision["message_id"])["state"] == "queued"
        assert gateways.accepted("fcm") == []


def test_an_inline_delivery_that_fails_hands_its_messages_to_the_push_queue(
    settings: Settings, gateways: Gateways, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queued: list[tuple[str, dict[str, Any]]] = []
    with _immediate_shop(settings, gateways, tmp_path, queued, inline=True) as rt:
        user = shopper(rt, gateways, "fallback")

        def broken() -> None:
            raise RuntimeError("gateways could not open")

        monkeypatch.setattr(rt, "sender", broken)
        decision = _purchase_fired_by(rt, user, "track-task-3")

        assert decision["action"] == "queued"
        assert queued == [("pushrec.deliver", {"message_ids": [decision["message_id"]]})]
        assert rt.outbox.state(decision["message_id"])["state"] == "queued"


def test_an_inline_delivery_that_meets_lost_scripts_loads_them_and_sends_at_once(
    settings: Settings, gateways: Gateways, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a promoted replica or a restarted Redis without the scripts (a cluster pipeline
    # cannot load them itself): handing the messages to the push queue would leave the
    # devices claimed until the claim's lease, and the message to the sweep
    queued: list[tuple[str, dict[str, Any]]] = []
    with _immediate_shop(settings, gateways, tmp_path, queued, inline=True) as rt:
        user = shopper(rt, gateways, "noscript")
        sender = rt.sender()
        real = sender.deliver_many
        calls: list[str] = []

        def scripts_lost_once(*args: Any, **kwargs: Any) -> Any:
            calls.append(args[2])
            if len(calls) == 1:
                rt.redis.script_flush()
                raise redis.exceptions.NoScriptError("NOSCRIPT No matching script.")
            return real(*args, **kwargs)

        monkeypatch.setattr(sender, "deliver_many", scripts_lost_once)
        decision = _purchase_fired_by(rt, user, "track-task-4")

        assert calls == ["track-task-4:inline"] * 2  # the same owner, again
        assert queued == []
        assert rt.outbox.state(decision["message_id"])["state"] == "sent"
        assert len(gateways.accepted("fcm")) == 1


def test_a_task_that_died_after_creating_its_message_records_the_decision_when_run_again(
    settings: Settings, gateways: Gateways, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queued: list[tuple[str, dict[str, Any]]] = []
    with _immediate_shop(settings, gateways, tmp_path, queued, inline=False) as rt:
        user = shopper(rt, gateways, "died")
        now = time.time()
        job = FireJob("post_purchase", user, "order-1", now, ("b0-1",), {})
        firer = rt.firer()

        def dies(*args: Any, **kwargs: Any) -> None:
            raise SystemExit("worker killed")  # after the message, before the decision

        monkeypatch.setattr(FiringWriter, "_record", dies)
        with pytest.raises(SystemExit):
            firer.fire_many([job], now, "task-1")
        assert rt.audit.decisions(user) == [] and queued == []

        monkeypatch.undo()
        [again] = firer.fire_many([job], now + 1, "task-1")  # the task, redelivered
        assert again["action"] == "queued"
        assert [d["message_id"] for d in rt.audit.decisions(user)] == [again["message_id"]]
        assert queued == [("pushrec.deliver", {"message_ids": [again["message_id"]]})]

        [third] = firer.fire_many([job], now + 2, "task-2")  # recorded now: a duplicate
        assert third["action"] == "duplicate" and len(rt.audit.decisions(user)) == 1


def test_a_job_fired_again_after_its_message_was_sent_is_a_duplicate_not_a_suppression(
    settings: Settings, gateways: Gateways, tmp_path: Path
) -> None:
    """A redelivered task (a campaign chunk after a crash) finds its message sent: the
    policy would now say no (its items were just pushed), but the first try's decision
    stands and nothing is recorded, counted or sent again."""
    queued: list[tuple[str, dict[str, Any]]] = []
    with _immediate_shop(settings, gateways, tmp_path, queued, inline=True) as rt:
        user = shopper(rt, gateways, "again")
        now = time.time()
        job = FireJob("post_purchase", user, "order-1", now, ("b0-1",), {})
        [first] = rt.firer().fire_many([job], now, "task-1")
        assert first["action"] == "queued" and len(gateways.accepted("fcm")) == 1
        stats_before = rt.audit.stats(["post_purchase"])

        [again] = rt.firer().fire_many([job], now + 1, "task-1")

        assert again == {**again, "action": "duplicate", "message_id": first["message_id"]}
        assert "policy" not in again  # not decided again
        assert [d["action"] for d in rt.audit.decisions(user)] == ["queued"]
        assert rt.audit.stats(["post_purchase"]) == stats_before
        assert len(gateways.accepted("fcm")) == 1 and queued == []


def test_a_cap_reached_at_send_time_suppresses_the_second_message_and_undoes_its_claim(
    settings: Settings, gateways: Gateways, tmp_path: Path
) -> None:
    queued: list[tuple[str, dict[str, Any]]] = []
    enqueue = lambda task, kwargs: queued.append((task, kwargs))  # noqa: E731
    with gateway_shop(
        settings, gateways, tmp_path / "index", enqueue, cap_marketing_per_day=1
    ) as rt:
        user = shopper(rt, gateways, "capped")
        now = time.time()
        ingest.track_one(
            rt,
            {"event_id": "p1", "user_id": user, "type": "purchase", "item_id": "b0-1", "ts": now},
            now,
            "t",
        )
        jobs = [
            FireJob("post_purchase", user, trigger, now, ("b0-1",), {}) for trigger in ("a", "b")
        ]
        decisions = rt.firer().fire_many(jobs, now)  # both pass: nothing is sent yet
        first, second = (str(d["message_id"]) for d in decisions)

        outcomes = rt.sender().deliver_many(
            [DeliveryRequest(first), DeliveryRequest(second)], now + 1, "deliver-task"
        )

        assert outcomes[0]["action"] == "sent"
        assert outcomes[1]["action"] == "suppressed"
        assert outcomes[1]["reason"].startswith("cap reached at send time")
        held = rt.outbox.state(second)
        assert held["state"] == "suppressed"
        assert not any(k.startswith("dev:") for k in held)  # its device claim is undone
        assert len(gateways.accepted("fcm")) == 1


def test_a_price_drop_whose_item_sold_out_again_is_suppressed_not_sent_without_it(
    shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, _ = shop
    user = shopper(rt, gateways, "pd")
    now = time.time()
    ingest.upsert_items(rt, [{"item_id": "b0-3", "stock": 0}], now)
    job = FireJob("price_drop", user, "drop-1", now, ("b0-3",), {"old": "20.0", "new": "13.0"})

    [decision] = rt.firer().fire_many([job], now + 1)

    assert decision["action"] == "suppress"
    assert decision["reason"] == "its own items are unavailable (out of stock or withdrawn)"
    assert "b0-3" not in [c["item_id"] for c in decision["candidates"]]
    assert gateways.accepted("fcm") == []


def test_reasons_name_the_items_title_and_what_the_shopper_did_never_an_id(
    shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, _ = shop
    user = shopper(rt, gateways, "why")
    now = time.time()
    ingest.track(
        rt,
        [
            {"event_id": "v", "user_id": user, "type": "view", "item_id": "b1-4", "ts": now - 9},
            {
                "event_id": "c",
                "user_id": user,
                "type": "add_to_cart",
                "item_id": "b1-5",
                "ts": now - 8,
            },
        ],
        now,
        "track_batch",
        "t",
    )
    mid = fire_post_purchase(rt, user, "b0-1", now)
    [decision] = [d for d in rt.audit.decisions(user) if d["message_id"] == mid]
    reasons = [c["reason"] for c in decision["candidates"]]

    assert reasons and all("b0-" not in r and "b1-" not in r for r in reasons)
    # the post-purchase items are the bought item's neighbours (block 0)
    assert "because you bought Item 1 of block 0" in reasons


def test_a_shopper_the_index_does_not_know_gets_what_is_trending_now(
    shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, _ = shop
    now = time.time()
    new_items = [
        {"item_id": i, "title": f"New {i}", "category": "new", "price": 5.0, "stock": 9,
         "url": f"https://shop.example/p/{i}"}
        for i in ("hot-1", "new-1")
    ]  # fmt: skip
    ingest.upsert_items(rt, new_items, now)
    buys = [  # other shoppers buying an item the index has never seen
        {"event_id": f"h{n}", "user_id": f"other{n}", "type": "purchase", "item_id": "hot-1",
         "ts": now - 60}
        for n in range(5)
    ]  # fmt: skip
    ingest.track(rt, buys, now, "track_batch", "t")
    user = shopper(rt, gateways, "cold")

    mid = fire_post_purchase(rt, user, "new-1", now)  # unknown to the index too
    [decision] = [d for d in rt.audit.decisions(user) if d["message_id"] == mid]

    offered = {c["item_id"]: c["reason"] for c in decision["candidates"]}
    assert offered.get("hot-1") == "popular right now"


def test_a_price_drop_whose_item_sells_out_before_the_send_is_held(
    shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, _ = shop
    user = shopper(rt, gateways, "gone")
    now = time.time()
    job = FireJob("price_drop", user, "drop-2", now, ("b0-4",), {"old": "20.0", "new": "13.0"})
    [decision] = rt.firer().fire_many([job], now)
    assert decision["action"] == "queued"
    ingest.upsert_items(rt, [{"item_id": "b0-4", "stock": 0}], now + 1)

    [outcome] = rt.sender().deliver_many([DeliveryRequest(decision["message_id"])], now + 2)

    assert outcome == {"action": "suppressed", "reason": "its item is out of stock"}
    assert gateways.accepted("fcm") == []


def test_a_holdout_message_is_checked_and_capped_as_a_sent_one_then_held_before_the_gateway(
    shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    """The holdout cell is counted where the treated one is: after the send-time checks
    and the cap reservation, once per message. Two orders a minute apart give a treated
    shopper one push (the second is capped by the rule's cooldown); they give a held-out
    shopper one held-out message, not two."""
    rt, _ = shop
    user = next(u for u in (f"h{n}" for n in range(400)) if _held_out(u))
    now = time.time()
    register(rt, user, "fcm", gateways.targets["fcm"], now)
    mids = []
    for n, at in enumerate((now, now + 60)):
        ingest.track_one(
            rt,
            {"event_id": f"o{n}", "user_id": user, "type": "purchase", "item_id": f"b{n}-1",
             "ts": at},
            at,
            "d",
        )  # fmt: skip
        job = FireJob("post_purchase", user, f"o{n}", at, (f"b{n}-1",), {})
        [decision] = rt.firer().fire_many([job], at)
        assert decision["action"] == "queued" and decision["message"]["cell"] == "holdout"
        mids.append(str(decision["message_id"]))

    first, second = (rt.sender().deliver_many([DeliveryRequest(m)], now + 61)[0] for m in mids)

    assert first == {"action": "held_out", "reason": "holdout cell"}
    assert second["action"] == "suppressed" and "cooldown" in second["reason"]
    assert [rt.outbox.state(m)["state"] for m in mids] == ["held_out", "suppressed"]
    assert gateways.accepted("fcm") == []
    stats = rt.audit.stats(["post_purchase"])["post_purchase"]
    assert (stats["held_out"], stats["delivered"]) == (1, 0)
    # its items count as pushed (no repeats) and as the holdout's (attribution)
    record = rt.outbox.get(mids[0])
    assert record is not None and record.cell == "holdout"
    bought = now + 120
    ingest.track_one(
        rt,
        {"event_id": "later", "user_id": user, "type": "purchase", "item_id": record.items[0],
         "ts": bought},
        bought,
        "d",
    )  # fmt: skip
    assert rt.audit.stats(["post_purchase"])["post_purchase"]["held_out_converted"] == 1
    assert rt.sender().deliver_many([DeliveryRequest(mids[0])], bought)[0]["action"] == "settled"
