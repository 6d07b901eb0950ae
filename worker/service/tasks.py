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
never looped; if even that record cannot be written, the message is requeued. Which Redis
errors are transient: `worker/store/errors.py`.

A message that never finishes (its worker process dies on it, or it runs over the hard
time limit) would be redelivered forever: redeliveries are counted, and past
`max_deliveries` the call is parked in the dead-letter stream and acked
(`worker/store/dead_letters.py`).
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
from worker.service import checkout, ingest, rebuild, receipt
from worker.service.runtime import Runtime
from worker.settings import Settings
from worker.shoppers.inputs import InvalidInput
from worker.store.errors import TRANSIENT, describe, is_transient, stack
from worker.store.lease import LeaseHeldError
from worker.store.redaction import PAYLOAD_MAX_CHARS, storable_json

log = logging.getLogger(__name__)


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

    def start_strategy(self, app: Any, consumer: Any, **kwargs: Any) -> Any:
        """Celery's per-message handler for this task, behind the checks of `receipt.py`
        (a message that can't become a call is recorded, not lost in the log)."""
        strategy = super().start_strategy(app, consumer, **kwargs)
        return receipt.checked_strategy(self.app, self.name, strategy)


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
        except Exception as exc:
            if not is_transient(exc):
                return _keep_failed(task, exc)
            if attempt == attempts:
                log.error("%s %s: Redis still unavailable, left for redelivery: %s",
                          task.name, task.request.id, describe(exc))  # fmt: skip
                _give_up(task, exc)
            if isinstance(exc, redis.exceptions.NoScriptError):
                _reload_scripts(task)  # Redis is back, without our scripts: no need to wait
            else:
                time.sleep(task.backoff_s(attempt))
    raise AssertionError("unreachable")


def _reload_scripts(task: PushrecTask) -> None:
    """Redis lost its scripts (restarted or flushed): load them before the retry."""
    rt = task.runtime
    with contextlib.suppress(*TRANSIENT):  # still away: the next attempt comes back here
        rt.scripts.load(rt.redis)


def _keep_failed(task: PushrecTask, exc: Exception) -> dict[str, str]:
    """A bug: keep the whole call in the rejected stream to replay (redacted, as every
    entry there; a large batch one entry per element), ack it, never loop. If the record
    can't be written (Redis failed too), the message goes back to the broker: losing it
    unrecorded is the one outcome not allowed, and the delivery cap ends the loop if the
    cause stays and Redis takes the count."""
    reason = describe(exc)
    log.error("%s %s failed: %s\n%s", task.name, task.request.id, reason, stack(exc))
    try:
        rejected = task.runtime.rejected
        pipe = task.runtime.redis.pipeline(transaction=False)
        for kept in _kept_failure(str(task.request.id), task.request.kwargs):
            rejected.record(task.name, "task_error", reason, kept, pipe=pipe)
        pipe.execute()
    except Exception as record_exc:
        log.error("%s %s: could not record the failure (%s), left for redelivery",
                  task.name, task.request.id, describe(record_exc))  # fmt: skip
        _give_up(task, exc)
    return {"error": reason}


def _kept_failure(task_id: str, kwargs: Any) -> list[dict[str, Any]]:
    """What the rejected stream keeps of a failed call: the whole call, or, for a batch too
    large for one entry (`redaction.PAYLOAD_MAX_CHARS`), one entry per element, each with
    the call's other kwargs, so every part can be replayed."""
    whole = {"task_id": task_id, "kwargs": kwargs}
    if not isinstance(kwargs, dict) or len(storable_json(whole)) <= PAYLOAD_MAX_CHARS:
        return [whole]
    for name, value in kwargs.items():
        if isinstance(value, list) and len(value) > 1:
            rest = {k: v for k, v in kwargs.items() if k != name}
            return [
                {"task_id": task_id, "entry": n, "of": len(value), "kwargs": {**rest, name: [one]}}
                for n, one in enumerate(value)
            ]
    return [whole]


def _park_if_poison(
    task: PushrecTask, spec: TaskSpec, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, str] | None:
    """On a redelivered message: count it; past `max_deliveries` park the call in the
    dead-letter stream (the message is then acked) and say so. None: run it."""
    delivery_info = task.request.delivery_info or {}
    if not delivery_info.get("redelivered"):
        return None
    try:
        dead = task.runtime.dead_letters
        deliveries = dead.count_redelivery(str(task.request.id))
        if deliveries <= task.app.settings.max_deliveries:
            return None
        reason = (
            f"delivered {deliveries} times without finishing "
            "(its worker died on it, or it ran over the time limit)"
        )
        dead.park(task.name, str(task.request.id), reason, spec.keep(args, kwargs), deliveries)
        if spec.on_park is not None:
            spec.on_park(task.runtime, kwargs)
    except Exception as exc:
        if not is_transient(exc):
            log.exception("%s %s: delivery count failed", task.name, task.request.id)
        return None  # can't count now: run it; the body retries or requeues on Redis
    return {"dead_lettered": reason}


def _give_up(task: PushrecTask, exc: Exception) -> NoReturn:
    """Reject the message with requeue (module docstring); a Redis broker that is down
    itself keeps it unacked and restores it after the visibility timeout. One more backoff
    first: RabbitMQ hands a requeued message out again at once, and with no retries
    configured this would spin. The reason goes as a string: the exception itself may not
    survive pickling to the pool's parent."""
    # This redelivery is ours, not a poison message's: it must not count toward the cap
    # (best effort: Redis is what failed).
    with contextlib.suppress(Exception):
        task.runtime.dead_letters.forget_count(str(task.request.id))
    time.sleep(task.backoff_s(task.app.settings.task_max_retries))
    raise Reject(describe(exc), requeue=True) from exc


def _delivery(task: PushrecTask) -> str:
    """The message's task id: kept by Celery across retries and broker redeliveries."""
    return str(task.request.id)


def _shape_rejected(task: PushrecTask, reason: str, payload: Any) -> dict[str, str]:
    _run(task, lambda rt: rt.rejected.record(task.name, "bad_call", reason, payload))
    return {"rejected": reason}


def _as_given(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return {"args": list(args), "kwargs": kwargs}


def _kwargs_only(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Positional args are dropped: redaction finds secrets by field name, and a token
    passed positionally has none."""
    return {"kwargs": kwargs}


Body = Callable[["PushrecTask", Runtime, dict[str, Any]], Any]


@dataclass(frozen=True)
class TaskSpec:
    """One task: its name, the kwargs a caller must and may send (checked before the
    body runs, internal tasks included: a message on the broker is input), its body, and
    what a rejected or parked call keeps (before the stream redacts it:
    `worker.store.redaction`)."""

    name: str
    body: Body
    required: frozenset[str] = frozenset()
    optional: frozenset[str] = frozenset()
    keep: Callable[[tuple[Any, ...], dict[str, Any]], Any] = _as_given
    ignore_result: bool = True
    # What parking a call in the dead-letter stream must also do (deliver: take its
    # messages off the stuck-message sweep, which would send them again under a new task).
    on_park: Callable[[Runtime, dict[str, Any]], None] | None = None


def _fire_jobs(task: PushrecTask, rt: Runtime, entries: list[Any]) -> list[FireJob]:
    """The well-formed jobs of `entries`; each malformed one is rejected alone."""
    jobs = []
    for entry in entries:
        try:
            jobs.append(FireJob.from_kwargs(entry))
        except InvalidInput as exc:
            rt.rejected.record(task.name, exc.code, exc.reason, entry)
    return jobs


def _fire(task: PushrecTask, rt: Runtime, kwargs: dict[str, Any]) -> Any:
    """Internal: evaluate rules for shoppers (from the scheduler): one job's kwargs, or
    `jobs`, a list of them (a fan-out). A malformed job is rejected alone."""
    entries = kwargs.get("jobs", [kwargs])
    if not isinstance(entries, list):
        return _shape_rejected(task, "pushrec.fire: jobs must be a list", kwargs)
    jobs = _fire_jobs(task, rt, entries)
    return rt.firer().fire_many(jobs, rt.settings.now(), _delivery(task))


def _deliver(task: PushrecTask, rt: Runtime, kwargs: dict[str, Any]) -> Any:
    """Internal: send queued messages to their shoppers' devices (push queue)."""
    try:
        requests = DeliveryRequest.from_kwargs(kwargs)
    except InvalidInput as exc:
        return _shape_rejected(task, exc.reason, kwargs)
    return rt.sender().deliver_many(requests, rt.settings.now(), _delivery(task))


def _park_deliveries(rt: Runtime, kwargs: dict[str, Any]) -> None:
    try:
        requests = DeliveryRequest.from_kwargs(kwargs)
    except InvalidInput:
        return
    pipe = rt.redis.pipeline(transaction=False)
    for request in requests:
        rt.outbox.set_state(request.message_id, "dead_lettered", pipe, "deliver task parked")
    pipe.execute()


def _rebuild(task: PushrecTask, rt: Runtime, kwargs: dict[str, Any]) -> Any:
    """Internal: build an index from the interaction log and publish it (maintenance)."""
    force = bool(kwargs.get("force", False))
    try:
        return rebuild.rebuild_index(rt.redis, rt.keys, rt.settings, rt.catalog, force=force)
    except LeaseHeldError as exc:  # a copy redelivered past the visibility timeout, or a
        log.info("index rebuild not started: %s", exc)  # rebuild run by hand meanwhile
        return {"skipped": str(exc)}


def _campaign_fire(task: PushrecTask, rt: Runtime, kwargs: dict[str, Any]) -> Any:
    """Internal: fire one chunk of a campaign run (push queue, paced by the scheduler)."""
    campaign = next((c for c in rt.settings.campaigns if c.name == kwargs.get("campaign")), None)
    entries = kwargs.get("jobs")
    if campaign is None or not isinstance(entries, list) or not isinstance(kwargs.get("run"), str):
        return _shape_rejected(task, "pushrec.campaign_fire: unknown campaign or bad jobs", kwargs)
    jobs = _fire_jobs(task, rt, entries)
    return rt.runs().fire_chunk(
        rt.firer(), kwargs["run"], jobs, rt.settings.now(), _delivery(task),
        campaign.coupon is not None,
    )  # fmt: skip


def _noop(task: PushrecTask, rt: Runtime, kwargs: dict[str, Any]) -> None:
    """Does nothing: the throughput ceiling of the broker and pool (bench/ingest.py)."""


_DEVICE = frozenset({"user_id", "channel"})
_USER = frozenset({"user_id"})

TASKS: tuple[TaskSpec, ...] = (
    TaskSpec(
        contract.TRACK,
        lambda t, rt, kw: ingest.track_one(rt, kw["event"], rt.settings.now(), _delivery(t)),
        required=frozenset({"event"}),
    ),
    TaskSpec(
        contract.TRACK_BATCH,
        lambda t, rt, kw: ingest.track_batch(rt, kw["events"], rt.settings.now(), _delivery(t)),
        required=frozenset({"events"}),
    ),
    TaskSpec(
        contract.UPSERT_ITEMS,
        lambda t, rt, kw: ingest.upsert_items(rt, kw["items"], rt.settings.now(), _delivery(t))[0],
        required=frozenset({"items"}),
    ),
    TaskSpec(
        contract.REGISTER_DEVICE,
        lambda t, rt, kw: ingest.register_device(rt, kw, rt.settings.now()),
        required=_DEVICE,
        optional=frozenset({"token", "subscription", "ts"}),
        keep=_kwargs_only,
    ),
    TaskSpec(
        contract.UNREGISTER_DEVICE,
        lambda t, rt, kw: ingest.unregister_device(rt, kw, rt.settings.now()),
        required=_DEVICE,
        optional=frozenset({"token", "endpoint"}),
        keep=_kwargs_only,
    ),
    TaskSpec(
        contract.SET_PREFERENCES,
        lambda t, rt, kw: ingest.set_preferences(rt, kw, rt.settings.now()),
        required=_USER,
        optional=frozenset({"consent", "timezone", "locale", "quiet_hours", "ts"}),
    ),
    TaskSpec(
        contract.FORGET_USER,
        lambda t, rt, kw: ingest.erase_user(rt, kw["user_id"]),
        required=_USER,
        ignore_result=False,
    ),
    TaskSpec(
        contract.CHECK_COUPON,
        lambda t, rt, kw: checkout.check_coupon(rt, kw, rt.settings.now()),
        required=frozenset({"code"}),
        optional=frozenset({"user_id", "basket"}),
        keep=_kwargs_only,
        ignore_result=False,
    ),
    TaskSpec(
        contract.REDEEM_COUPON,
        lambda t, rt, kw: checkout.redeem_coupon(rt, kw, rt.settings.now()),
        required=frozenset({"code"}),
        optional=frozenset({"user_id", "basket", "order_id"}),
        keep=_kwargs_only,
        ignore_result=False,
    ),
    TaskSpec(
        contract.FIRE,
        _fire,
        optional=frozenset(
            {"jobs", "rule", "user_id", "trigger_id", "trigger_ts", "items", "extra"}
        ),
    ),
    TaskSpec(
        contract.DELIVER,
        _deliver,
        optional=frozenset({"message_ids", "message_id", "attempt", "devices"}),
        on_park=_park_deliveries,
    ),
    TaskSpec(contract.REBUILD_INDEX, _rebuild, optional=frozenset({"force"}), ignore_result=False),
    TaskSpec(
        contract.CAMPAIGN_FIRE, _campaign_fire, required=frozenset({"campaign", "run", "jobs"})
    ),
    TaskSpec(contract.NOOP, _noop),
)


def register_tasks(app: Celery) -> None:
    """Register every task of `TASKS` on `app` under its name, over one wrapper."""
    for spec in TASKS:
        register_task(app, spec)


def register_task(app: Celery, spec: TaskSpec) -> None:
    """Register `spec` on `app` over the wrapper every pushrec task runs in (call shape,
    delivery cap, Redis retries, failures kept)."""

    def run(self: PushrecTask, *args: Any, **kwargs: Any) -> Any:
        if parked := _park_if_poison(self, spec, args, kwargs):
            return parked
        if reason := _call_shape(self, args, kwargs, spec.required, spec.optional):
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
