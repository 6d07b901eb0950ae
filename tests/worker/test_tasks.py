"""The task wrapper's outage handling, without a worker: what a task hands the broker."""

from __future__ import annotations

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
