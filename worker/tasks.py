"""Thin Celery tasks: check the call's shape, hand the JSON to `ingest`, ride out outages.

A call that breaks the contract (positional args, unknown or missing kwargs) is rejected
and recorded like any bad input: never retried. A Redis outage is retried in the task a
finite number of times with capped, jittered backoff; if Redis is still away, the task
rejects its message with requeue, so a worker takes it again later: nothing is lost, and
every write is idempotent, so nothing is applied twice. (Letting the task fail would not
do: under late acks Celery answers a failure with a reject *without* requeue, which the
broker takes as "drop the message". Nor `task.retry()`: it would publish a new message to
the broker that may be down, and park it as an ETA task in worker memory.) Any other
error is a bug: the call is kept in the rejected stream for replay and the message acked,
never looped.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any, NoReturn

import redis
from celery import Task
from celery.exceptions import Reject

from worker import contract, ingest, rebuild
from worker.app import PushrecApp
from worker.firing import FireJob
from worker.runtime import Runtime
from worker.sending import DeliveryRequest

log = logging.getLogger(__name__)

# NoScriptError: a restarted Redis has lost its script cache; the retry loads it again.
_TRANSIENT = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.NoScriptError,
)


class PushrecTask(Task):  # type: ignore[type-arg]
    app: PushrecApp

    @property
    def runtime(self) -> Runtime:
        return self.app.runtime()

    def backoff_s(self, attempt: int) -> float:
        """Full jitter over a capped exponential (attempts 0, 1, 2, … -> up to 1, 2, 4 … s)."""
        cap = self.app.settings.task_retry_backoff_max_s
        return random.uniform(0, min(cap, 2.0**attempt))


def _call_shape(
    task: PushrecTask,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    required: set[str],
    optional: frozenset[str] | set[str] = frozenset(),
) -> str | None:
    """Why this call does not fit the contract, or None if it does."""
    if args:
        return f"{task.name} takes JSON kwargs only, got {len(args)} positional args"
    problems = []
    if missing := required - kwargs.keys():
        problems.append(f"missing kwargs {sorted(missing)}")
    if unknown := kwargs.keys() - required - optional:
        problems.append(f"unknown kwargs {sorted(unknown)[:5]}")
    return f"{task.name}: {'; '.join(problems)}" if problems else None


def _run(task: PushrecTask, body: Callable[[Runtime], Any]) -> Any:
    attempts = task.app.settings.task_max_retries
    for attempt in range(attempts + 1):
        try:
            return body(task.runtime)
        except _TRANSIENT as exc:
            if attempt == attempts:
                log.error("%s %s: Redis still unavailable, left for redelivery: %s",
                          task.name, task.request.id, exc)  # fmt: skip
                _give_up(task, exc)
            if isinstance(exc, redis.exceptions.NoScriptError):
                _reload_scripts(task)  # Redis is back, without our scripts: no need to wait
            else:
                time.sleep(task.backoff_s(attempt))
        except Exception as exc:
            return _keep_failed(task, exc)
    raise AssertionError("unreachable")


def _reload_scripts(task: PushrecTask) -> None:
    """Redis lost its scripts (restarted or flushed): load them before the retry."""
    rt = task.runtime
    with contextlib.suppress(*_TRANSIENT):  # still away: the next attempt comes back here
        rt.scripts.load(rt.redis)


def _keep_failed(task: PushrecTask, exc: Exception) -> dict[str, str]:
    """A bug: keep the call in the rejected stream to replay, ack it, never loop."""
    log.exception("%s %s failed", task.name, task.request.id)
    reason = f"{type(exc).__name__}: {exc}"
    payload = {"task_id": task.request.id, "kwargs": task.request.kwargs}
    try:
        task.runtime.rejected.record(task.name, "task_error", reason, payload)
    except _TRANSIENT:  # Redis went away as well: redelivery will meet the bug again
        _give_up(task, exc)
    return {"error": reason}


def _give_up(task: PushrecTask, exc: Exception) -> NoReturn:
    """Reject the message with requeue (module docstring); a Redis broker that is down
    itself keeps it unacked and restores it after the visibility timeout. One more backoff
    first: RabbitMQ hands a requeued message out again at once, and with no retries
    configured this would spin. The reason goes as a string: the exception itself may not
    survive pickling to the pool's parent."""
    time.sleep(task.backoff_s(task.app.settings.task_max_retries))
    raise Reject(f"{type(exc).__name__}: {exc}", requeue=True) from exc


def _delivery(task: PushrecTask) -> str:
    """The message's task id: kept by Celery across retries and broker redeliveries."""
    return str(task.request.id)


def _shape_rejected(task: PushrecTask, reason: str, payload: Any) -> dict[str, str]:
    _run(task, lambda rt: rt.rejected.record(task.name, "bad_call", reason, payload))
    return {"rejected": reason}


_DEVICE_FIELDS = {"user_id", "channel"}
_DEVICE_OPTIONAL = {"token", "subscription", "ts"}
_PREFERENCE_OPTIONAL = {"consent", "timezone", "locale", "quiet_hours", "ts"}


def register_tasks(app: PushrecApp) -> None:
    """Register every contract task on `app` under its public name."""

    @app.task(name=contract.TRACK, bind=True, base=PushrecTask)
    def track(self: PushrecTask, *args: Any, **kwargs: Any) -> Any:
        if reason := _call_shape(self, args, kwargs, {"event"}):
            return _shape_rejected(self, reason, {"args": args, "kwargs": kwargs})
        return _run(
            self, lambda rt: ingest.track_one(rt, kwargs["event"], time.time(), _delivery(self))
        )

    @app.task(name=contract.TRACK_BATCH, bind=True, base=PushrecTask)
    def track_batch(self: PushrecTask, *args: Any, **kwargs: Any) -> Any:
        if reason := _call_shape(self, args, kwargs, {"events"}):
            return _shape_rejected(self, reason, {"args": args, "kwargs": kwargs})
        return _run(
            self, lambda rt: ingest.track_batch(rt, kwargs["events"], time.time(), _delivery(self))
        )

    @app.task(name=contract.UPSERT_ITEMS, bind=True, base=PushrecTask)
    def upsert_items(self: PushrecTask, *args: Any, **kwargs: Any) -> Any:
        if reason := _call_shape(self, args, kwargs, {"items"}):
            return _shape_rejected(self, reason, {"args": args, "kwargs": kwargs})
        return _run(self, lambda rt: ingest.upsert_items(rt, kwargs["items"], time.time())[0])

    @app.task(name=contract.REGISTER_DEVICE, bind=True, base=PushrecTask)
    def register_device(self: PushrecTask, *args: Any, **kwargs: Any) -> Any:
        if reason := _call_shape(self, args, kwargs, _DEVICE_FIELDS, _DEVICE_OPTIONAL):
            return _shape_rejected(self, reason, {"kwargs": ingest.redact_device(kwargs)})
        return _run(self, lambda rt: ingest.register_device(rt, kwargs, time.time()))

    @app.task(name=contract.UNREGISTER_DEVICE, bind=True, base=PushrecTask)
    def unregister_device(self: PushrecTask, *args: Any, **kwargs: Any) -> Any:
        if reason := _call_shape(self, args, kwargs, _DEVICE_FIELDS, {"token", "endpoint"}):
            return _shape_rejected(self, reason, {"kwargs": ingest.redact_device(kwargs)})
        return _run(self, lambda rt: ingest.unregister_device(rt, kwargs))

    @app.task(name=contract.SET_PREFERENCES, bind=True, base=PushrecTask)
    def set_preferences(self: PushrecTask, *args: Any, **kwargs: Any) -> Any:
        if reason := _call_shape(self, args, kwargs, {"user_id"}, _PREFERENCE_OPTIONAL):
            return _shape_rejected(self, reason, {"args": args, "kwargs": kwargs})
        return _run(self, lambda rt: ingest.set_preferences(rt, kwargs, time.time()))

    @app.task(name=contract.FORGET_USER, bind=True, base=PushrecTask, ignore_result=False)
    def forget_user(self: PushrecTask, *args: Any, **kwargs: Any) -> Any:
        if reason := _call_shape(self, args, kwargs, {"user_id"}):
            return _shape_rejected(self, reason, {"args": args, "kwargs": kwargs})
        return _run(self, lambda rt: ingest.erase_user(rt, kwargs["user_id"]))

    @app.task(name=contract.FIRE, bind=True, base=PushrecTask)
    def fire(self: PushrecTask, *args: Any, **kwargs: Any) -> Any:
        """Internal: evaluate rules for shoppers (from the scheduler): one job's kwargs,
        or `jobs`, a list of them (a fan-out)."""
        jobs = [FireJob.from_kwargs(j) for j in kwargs.get("jobs", [kwargs])]
        return _run(self, lambda rt: rt.firer().fire_many(jobs, time.time()))

    @app.task(name=contract.DELIVER, bind=True, base=PushrecTask)
    def deliver(self: PushrecTask, *args: Any, **kwargs: Any) -> Any:
        """Internal: send queued messages to their shoppers' devices (push queue)."""
        requests = DeliveryRequest.from_kwargs(kwargs)
        return _run(
            self, lambda rt: rt.sender().deliver_many(requests, time.time(), _delivery(self))
        )

    @app.task(name=contract.REBUILD_INDEX, bind=True, base=PushrecTask, ignore_result=False)
    def rebuild_index(self: PushrecTask, *args: Any, **kwargs: Any) -> Any:
        """Internal: build an index from the interaction log and publish it (maintenance)."""
        force = bool(kwargs.get("force", False))
        return _run(
            self,
            lambda rt: rebuild.rebuild_index(
                rt.redis, rt.keys, rt.settings, rt.catalog, force=force
            ),
        )

    @app.task(name=contract.NOOP, bind=True, base=PushrecTask)
    def noop(self: PushrecTask, *args: Any, **kwargs: Any) -> None:
        """Does nothing: the throughput ceiling of the broker and pool (bench/ingest.py)."""
