"""Where the messages a task queues are sent: in that task on a worker that consumes the push
queue (with the round trips it makes anyway), else by deliver tasks; what the firing's
writes and a failing inline delivery leave."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.worker.realtime import (
    Gateways,
    gateway_shop,
    held_out,
    pipeline_trips,
    register,
    rule,
    shopper,
)
from worker.delivery.outbox import MessageRecord
from worker.delivery.requests import FiringWrites
from worker.firing.reads import FiringReader
from worker.firing.writes import FiringWriter
from worker.policy.jobs import FireJob
from worker.rules import Rule
from worker.service import ingest
from worker.service.runtime import Runtime
from worker.settings import Settings
from worker.shoppers.segment_index import ACTIVITY
from worker.shoppers.snapshot import ShopperReads
from worker.shoppers.state import PendingMarks


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
    recording_shop: tuple[Runtime, list[Any]], key_prefix: str
) -> None:
    """A delivery that fails while queuing its caps and claims after the firing's writes
    (a bug, a bad rule) leaves the writes unsent and alone, for `land`."""
    rt, _ = recording_shop
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
        recorded = pipeline_trips(monkeypatch)
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


@pytest.mark.redis_kinds
def test_the_segment_index_takes_a_firing_shoppers_reads_from_the_firings(
    settings: Settings, gateways: Gateways, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shopper whose rule fires at once is read once in the round trip that applies
    the event: the firing's read carries the segment index's parts too (profile, cart,
    affinity), and the index writes from it what a read of its own would give."""
    queued: list[tuple[str, dict[str, Any]]] = []
    with _immediate_shop(settings, gateways, tmp_path, queued, inline=True) as rt:
        user = shopper(rt, gateways, "one-read")
        asked: list[tuple[str, frozenset[str]]] = []  # (shopper, parts) of each read queued
        real = ShopperReads.queue

        def queue(reads: ShopperReads, pipe: Any, keys: Any, user_id: str) -> None:
            asked.append((user_id, reads.parts))
            real(reads, pipe, keys, user_id)

        monkeypatch.setattr(ShopperReads, "queue", queue)
        decision = _purchase_fired_by(rt, user, "track-task-s")
        assert decision["action"] == "queued" and len(gateways.accepted("fcm")) == 1
        firing, recheck = [parts for u, parts in asked if u == user]  # apply's, re-check's
        assert ACTIVITY.parts <= firing and not ACTIVITY.parts <= recheck

        segment = rt.keys.segment_of(user)
        indexed = [rt.redis.zscore(segment.affinity("block0"), user),
                   rt.redis.zscore(segment.seen, user)]  # fmt: skip
        assert indexed[0] == 1.0 and indexed[1] is not None  # block0 is all it bought
        monkeypatch.setattr(ShopperReads, "queue", real)
        rt.segment_index.refresh_activity([user], float(indexed[1]))  # its own read
        assert [rt.redis.zscore(segment.affinity("block0"), user),
                rt.redis.zscore(segment.seen, user)] == indexed  # fmt: skip

        # in a batch, the shoppers nothing fires for are read as before, beside them
        browser = shopper(rt, gateways, "browser")
        buyer = shopper(rt, gateways, "buyer")  # the device (one token here) is the buyer's
        now = time.time()
        batch = [{"event_id": f"v-{browser}", "user_id": browser, "type": "view",
                  "item_id": "b1-2", "ts": now},
                 {"event_id": f"p-{buyer}", "user_id": buyer, "type": "purchase",
                  "item_id": "b1-3", "ts": now}]  # fmt: skip
        monkeypatch.setattr(ShopperReads, "queue", queue)
        asked.clear()
        ingest.track(rt, batch, now, "pushrec.track_batch", "track-task-b")
        assert len(gateways.accepted("fcm")) == 2  # the buyer's cross-sell
        assert [parts for u, parts in asked if u == browser] == [ACTIVITY.parts]  # its own
        firing, recheck = [parts for u, parts in asked if u == buyer]
        assert ACTIVITY.parts <= firing and not ACTIVITY.parts <= recheck
        for u in (browser, buyer):
            seg = rt.keys.segment_of(u)
            assert rt.redis.zscore(seg.affinity("block1"), u) == 1.0
            assert rt.redis.zscore(seg.seen, u) == now


def test_reads_made_for_events_that_prove_repeats_are_not_used_to_fire_them(
    settings: Settings, gateways: Gateways, tmp_path: Path
) -> None:
    """A batch's rules are read for as if every event were new; an event applied before
    (here one whose firing found no device) fires nothing again, the new one fires."""
    queued: list[tuple[str, dict[str, Any]]] = []
    with _immediate_shop(settings, gateways, tmp_path, queued, inline=True) as rt:
        user = next(u for u in (f"repeat{n}" for n in range(100)) if not held_out(u))
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


@pytest.mark.parametrize("read_first", [False, True], ids=["read", "read-first"])
@pytest.mark.parametrize("rule_name", ["post_purchase", "no-such-rule"])
def test_a_firing_sends_its_callers_writes_whatever_it_does(
    recording_shop: tuple[Runtime, list[Any]], gateways: Gateways, key_prefix: str, rule_name: str,
    read_first: bool, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """`fire_many(ahead=...)` sends the caller's writes whatever it does next: with its
    read, or, with the reads made already (`read_first`), with the create or alone with
    the writes when nothing is created (a rule gone); an error among them raises before
    any decision is recorded."""
    rt, _ = recording_shop
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
