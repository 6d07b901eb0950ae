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
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import redis
from celery import Celery, Task
from celery.exceptions import Reject

from worker import contract
from worker.delivery.requests import DeliveryRequest
from worker.policy.jobs import FireJob
from worker.service import ingest, rebuild
from worker.service.runtime import Runtime
from worker.settings import Settings

log = logging.getLogger(__name__)

# NoScriptError: a restarted Redis has lost its script cache; the retry loads it again.
_TRANSIENT = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.NoScriptError,
)


class _App(Protocol):
    """What a task needs of its app (`app.PushrecApp`, which imports this module)."""

    settings: Settings

    def runtime(self) -> Runtime: ...


class PushrecTask(Task):  # type: ignore[type-arg]
    app: _App  # type: ignore[assignment]

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
    required: frozenset[str],
    optional: frozenset[str] = frozenset(),
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
    """A bug: keep the call in the rejected stream to replay (redacted, as every entry
    there), ack it, never loop."""
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


def _as_given(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return {"args": args, "kwargs": kwargs}


def _kwargs_only(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Positional args are dropped: redaction finds secrets by field name, and a token
    passed positionally has none."""
    return {"kwargs": kwargs}


Body = Callable[["PushrecTask", Runtime, dict[str, Any]], Any]


@dataclass(frozen=True)
class TaskSpec:
    """One task: its name, the kwargs a caller must and may send (checked before the
    body runs, for contract tasks), its body, and what a rejected call keeps (before the
    rejected stream redacts it: `worker.store.redaction`)."""

    name: str
    body: Body
    required: frozenset[str] = frozenset()
    optional: frozenset[str] = frozenset()
    checked: bool = True  # internal tasks (sent by pushrec itself) parse their own kwargs
    keep: Callable[[tuple[Any, ...], dict[str, Any]], Any] = _as_given
    ignore_result: bool = True


def _fire(task: PushrecTask, rt: Runtime, kwargs: dict[str, Any]) -> Any:
    """Internal: evaluate rules for shoppers (from the scheduler): one job's kwargs, or
    `jobs`, a list of them (a fan-out)."""
    jobs = [FireJob.from_kwargs(j) for j in kwargs.get("jobs", [kwargs])]
    return rt.firer().fire_many(jobs, time.time())


def _deliver(task: PushrecTask, rt: Runtime, kwargs: dict[str, Any]) -> Any:
    """Internal: send queued messages to their shoppers' devices (push queue)."""
    requests = DeliveryRequest.from_kwargs(kwargs)
    return rt.sender().deliver_many(requests, time.time(), _delivery(task))


def _rebuild(task: PushrecTask, rt: Runtime, kwargs: dict[str, Any]) -> Any:
    """Internal: build an index from the interaction log and publish it (maintenance)."""
    force = bool(kwargs.get("force", False))
    return rebuild.rebuild_index(rt.redis, rt.keys, rt.settings, rt.catalog, force=force)


def _noop(task: PushrecTask, rt: Runtime, kwargs: dict[str, Any]) -> None:
    """Does nothing: the throughput ceiling of the broker and pool (bench/ingest.py)."""


_DEVICE = frozenset({"user_id", "channel"})
_USER = frozenset({"user_id"})

TASKS: tuple[TaskSpec, ...] = (
    TaskSpec(
        contract.TRACK,
        lambda t, rt, kw: ingest.track_one(rt, kw["event"], time.time(), _delivery(t)),
        required=frozenset({"event"}),
    ),
    TaskSpec(
        contract.TRACK_BATCH,
        lambda t, rt, kw: ingest.track_batch(rt, kw["events"], time.time(), _delivery(t)),
        required=frozenset({"events"}),
    ),
    TaskSpec(
        contract.UPSERT_ITEMS,
        lambda t, rt, kw: ingest.upsert_items(rt, kw["items"], time.time())[0],
        required=frozenset({"items"}),
    ),
    TaskSpec(
        contract.REGISTER_DEVICE,
        lambda t, rt, kw: ingest.register_device(rt, kw, time.time()),
        required=_DEVICE,
        optional=frozenset({"token", "subscription", "ts"}),
        keep=_kwargs_only,
    ),
    TaskSpec(
        contract.UNREGISTER_DEVICE,
        lambda t, rt, kw: ingest.unregister_device(rt, kw),
        required=_DEVICE,
        optional=frozenset({"token", "endpoint"}),
        keep=_kwargs_only,
    ),
    TaskSpec(
        contract.SET_PREFERENCES,
        lambda t, rt, kw: ingest.set_preferences(rt, kw, time.time()),
        required=_USER,
        optional=frozenset({"consent", "timezone", "locale", "quiet_hours", "ts"}),
    ),
    TaskSpec(
        contract.FORGET_USER,
        lambda t, rt, kw: ingest.erase_user(rt, kw["user_id"]),
        required=_USER,
        ignore_result=False,
    ),
    TaskSpec(contract.FIRE, _fire, checked=False),
    TaskSpec(contract.DELIVER, _deliver, checked=False),
    TaskSpec(contract.REBUILD_INDEX, _rebuild, checked=False, ignore_result=False),
    TaskSpec(contract.NOOP, _noop, checked=False),
)


def register_tasks(app: Celery) -> None:
    """Register every task of `TASKS` on `app` under its name, over one wrapper."""
    for spec in TASKS:
        _register(app, spec)


def _register(app: Celery, spec: TaskSpec) -> None:
    def run(self: PushrecTask, *args: Any, **kwargs: Any) -> Any:
        if spec.checked and (
            reason := _call_shape(self, args, kwargs, spec.required, spec.optional)
        ):
            return _shape_rejected(self, reason, spec.keep(args, kwargs))
        return _run(self, lambda rt: spec.body(self, rt, kwargs))

    run.__name__ = spec.name.rpartition(".")[2]
    run.__doc__ = spec.body.__doc__
    # shared=False: each app (a process may build several, as tests do) keeps its own
    app.task(
        name=spec.name,
        bind=True,
        base=PushrecTask,
        ignore_result=spec.ignore_result,
        shared=False,
    )(run)
