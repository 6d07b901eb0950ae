"""Poison messages end in the dead-letter stream: counted per delivery, parked past
`max_deliveries`, listed and replayed by `pushrec dead-letters`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.exceptions import Reject

from tests.clock import RUN_NOW
from tests.worker.conftest import WorkerProcess, node_name, wait_for, worker_env
from worker import contract
from worker.client import PushrecClient
from worker.service import tasks
from worker.service.app import create_app
from worker.service.runtime import Runtime
from worker.settings import Settings

KILLER = "tests.kill_own_worker"  # registered by poison_app.py, the test worker's app


def _event(event_id: str, user: str = "u1") -> dict[str, Any]:
    return {"event_id": event_id, "user_id": user, "type": "view", "item_id": "i1", "ts": RUN_NOW}


def _deliver_as_broker(
    task: Any, task_id: str, redelivered: bool, *args: Any, **kwargs: Any
) -> Any:
    """Run `task` as a worker would for one delivery of message `task_id`."""
    task.push_request(
        id=task_id, args=args, kwargs=kwargs, delivery_info={"redelivered": redelivered}
    )
    try:
        return task.run(*args, **kwargs)
    finally:
        task.pop_request()


def test_a_message_delivered_past_the_cap_is_parked_counted_and_acked(
    settings: Settings, runtime: Runtime
) -> None:
    app = create_app(settings.model_copy(update={"max_deliveries": 3}))
    task = app.tasks[contract.TRACK]
    try:
        outcomes = [_deliver_as_broker(task, "msg-1", n > 0, event=_event("e1")) for n in range(4)]
    finally:
        app.close_runtime()
    assert [o.get("dead_lettered") is None for o in outcomes] == [True, True, True, False]
    assert outcomes[0] == {"applied": 1, "duplicates": 0, "rejected": 0}
    [parked] = runtime.dead_letters.recent()
    assert (parked.task, parked.task_id, parked.deliveries) == (contract.TRACK, "msg-1", 4)
    assert parked.replayable and parked.call == {"args": [], "kwargs": {"event": _event("e1")}}
    assert runtime.metrics.snapshot()["tasks.dead_lettered"] == 1
    assert runtime.redis.exists(runtime.keys.deliveries("msg-1")) == 0


def test_a_parked_deliver_call_takes_its_messages_off_the_stuck_sweep(
    settings: Settings, runtime: Runtime
) -> None:
    """Else the sweep would send them again under a new task id, a new count, forever."""
    for mid in ("m-1", "m-2", "m-3"):
        runtime.redis.zadd(runtime.keys.outbox_queued(runtime.keys.shard(mid)), {mid: 1.0})
    app = create_app(settings.model_copy(update={"max_deliveries": 2}))
    try:
        for n in range(3):
            _deliver_as_broker(
                app.tasks[contract.DELIVER], "msg-d", n > 0, message_ids=["m-1", "m-2"]
            )
    finally:
        app.close_runtime()
    assert runtime.outbox.queued_count() == 1
    assert runtime.outbox.stuck(time.time(), 0) == ["m-3"]
    state = runtime.redis.hget(runtime.keys.message("m-1").state, "state")
    assert state == "dead_lettered"


def test_a_requeue_after_a_redis_outage_does_not_count_toward_the_cap(
    settings: Settings, runtime: Runtime
) -> None:
    app = create_app(settings.model_copy(update={"max_deliveries": 2, "task_max_retries": 0}))
    task = app.tasks[contract.TRACK]
    task.backoff_s = lambda attempt: 0.0  # type: ignore[method-assign]
    try:
        for _ in range(4):  # each delivery meets Redis away once, and requeues
            task.push_request(id="msg-o", delivery_info={"redelivered": True})
            try:
                assert tasks._park_if_poison(task, tasks.TASKS[0], (), {}) is None
                with pytest.raises(Reject):
                    tasks._run(task, _redis_away)
            finally:
                task.pop_request()
    finally:
        app.close_runtime()
    assert runtime.dead_letters.size() == 0
    assert runtime.redis.exists(runtime.keys.deliveries("msg-o")) == 0


def _redis_away(rt: Runtime) -> None:
    raise redis.ConnectionError("Connection refused")


def test_a_first_delivery_costs_no_count(settings: Settings, runtime: Runtime) -> None:
    app = create_app(settings)
    try:
        _deliver_as_broker(app.tasks[contract.TRACK], "msg-2", False, event=_event("e2"))
    finally:
        app.close_runtime()
    assert runtime.redis.exists(runtime.keys.deliveries("msg-2")) == 0


def test_a_parked_device_registration_is_kept_redacted_and_not_replayable(
    settings: Settings, runtime: Runtime
) -> None:
    app = create_app(settings.model_copy(update={"max_deliveries": 2}))
    task = app.tasks[contract.REGISTER_DEVICE]
    call = {"user_id": "u1", "channel": "fcm", "token": "secret-device-token"}
    try:
        for n in range(3):
            _deliver_as_broker(task, "msg-3", n > 0, **call)
    finally:
        app.close_runtime()
    [parked] = runtime.dead_letters.recent()
    assert "secret-device-token" not in parked.call_text
    assert not parked.replayable


def test_malformed_internal_calls_are_recorded_not_lost(
    settings: Settings, runtime: Runtime
) -> None:
    app = create_app(settings)
    try:
        fire, deliver = app.tasks[contract.FIRE], app.tasks[contract.DELIVER]
        good_and_bad = [{"rule": "nope", "user_id": "u1"}, "junk", {"trigger_ts": 10**309}]
        _deliver_as_broker(fire, "f1", False, jobs=good_and_bad)
        _deliver_as_broker(fire, "f2", False, "positional")
        _deliver_as_broker(deliver, "d1", False, message_ids="not-a-list")
        _deliver_as_broker(deliver, "d2", False, message_id="m", attempt="x")
    finally:
        app.close_runtime()
    rows = runtime.rejected.recent(10)
    assert len(rows) == 6 and {r["code"] for r in rows} == {"bad_call"}
    assert not any(r["code"] == "task_error" for r in rows)


def pushrec(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.integration
def test_a_task_that_kills_its_worker_ends_in_dead_letters_and_the_queue_moves_on(
    settings: Settings, runtime: Runtime, client: PushrecClient, tmp_path: Path
) -> None:
    """A real prefork worker whose task SIGKILLs its own pool process on every delivery:
    after `max_deliveries` it is parked, and the events behind it are applied. The entry
    is then listed and replayed with the CLI."""
    own = settings.model_copy(update={"max_deliveries": 3})
    env = worker_env(own, {"PUSHREC_MAX_DELIVERIES": "3"})
    worker = WorkerProcess(
        own, tmp_path / "poison.log", "poison", 1, env=env,
        command=("-A", "tests.worker.poison_app", "worker", "--concurrency=1",
                 f"--hostname={node_name('poison')}", "--loglevel=INFO",
                 f"--queues={own.queue_activity}"),
        module="celery",
    )  # fmt: skip
    try:
        producer = create_app(own)
        killer_id = producer.send_task(KILLER, kwargs={"n": 1}, queue=own.queue_activity).id
        producer.close()
        for n in range(5):
            client.track(_event(f"after-{n}"))
        wait_for(
            lambda: (
                runtime.dead_letters.size() == 1
                and runtime.metrics.snapshot().get("events.applied", 0) == 5
            ),
            timeout=90,
            what="the poison message parked, the events behind it applied",
        )
        [parked] = runtime.dead_letters.recent()
        assert (parked.task, parked.task_id, parked.deliveries) == (KILLER, killer_id, 4)
        assert worker.log().count("WorkerLostError") >= 3
    finally:
        worker.stop()

    listed = pushrec("dead-letters", env=env)
    assert listed.returncode == 0, listed.stderr
    shown = json.loads(listed.stdout)
    assert shown["total"] == 1 and shown["latest"][0]["task_id"] == killer_id

    runtime.dead_letters.remove(parked.entry_id)
    # A replayed call goes back to its queue and is applied.
    runtime.dead_letters.park(
        contract.TRACK, "msg-r", "test", {"args": [], "kwargs": {"event": _event("late")}}, 4
    )
    [entry] = runtime.dead_letters.recent()
    replayed = pushrec("dead-letters", "replay", entry.entry_id, env=env)
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout)["task"] == contract.TRACK
    assert runtime.dead_letters.size() == 0
    again = pushrec("dead-letters", "replay", entry.entry_id, env=env)
    assert again.returncode == 2 and "no dead letter" in again.stderr
    worker = WorkerProcess(own, tmp_path / "w.log", "w", 1, env=env)
    try:
        wait_for(lambda: runtime.metrics.snapshot().get("events.applied", 0) == 6, what="replay")
    finally:
        worker.stop()
