"""The task wrapper's outage handling, without a worker: what a task hands the broker."""

from __future__ import annotations

import json

import pytest
import redis
from celery.exceptions import Reject

from worker import contract
from worker.service import tasks
from worker.service.app import create_app
from worker.service.runtime import Runtime
from worker.settings import Settings


def test_a_task_that_gives_up_on_redis_hands_its_message_back_with_requeue(
    settings: Settings,
) -> None:
    """Under late acks Celery rejects a failed task's message *without* requeue, which a
    broker takes as "drop it"; a task that gave up must requeue it instead."""
    app = create_app(settings.model_copy(update={"task_max_retries": 1}))
    task = app.tasks[contract.TRACK]
    attempts = []

    def redis_away(rt: Runtime) -> None:
        attempts.append(rt)
        raise redis.ConnectionError("Connection refused")

    task.backoff_s = lambda attempt: 0.0  # type: ignore[method-assign]
    try:
        with pytest.raises(Reject) as rejected:
            tasks._run(task, redis_away)
    finally:
        app.close_runtime()
    assert rejected.value.requeue is True
    assert rejected.value.reason == "ConnectionError: Connection refused"
    assert len(attempts) == 2  # the first try and one retry


def test_a_failed_batch_too_large_for_one_entry_is_kept_one_entry_per_event(
    settings: Settings, runtime: Runtime
) -> None:
    """A bug record keeps every part of the call, to replay: never a slice of it."""
    events = [
        {"event_id": f"e{n}", "user_id": f"u{n}", "type": "view", "item_id": "i", "ts": 1e9,
         "props": {"note": "x" * 300}}
        for n in range(500)
    ]  # fmt: skip
    app = create_app(settings)
    task = app.tasks[contract.TRACK_BATCH]
    task.push_request(id="t-big", kwargs={"events": events})
    try:
        assert tasks._keep_failed(task, RuntimeError("a bug")) == {"error": "RuntimeError: a bug"}
    finally:
        task.pop_request()
        app.close_runtime()
    rows = runtime.rejected.recent(1000)
    assert len(rows) == 500 and {r["code"] for r in rows} == {"task_error"}
    kept = sorted((json.loads(r["payload"]) for r in rows), key=lambda p: int(p["entry"]))
    assert [p["kwargs"]["events"] for p in kept] == [[e] for e in events]
    assert all("truncated" not in r for r in rows)
