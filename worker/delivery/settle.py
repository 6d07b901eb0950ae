"""Settling a batch of deliveries once their sends are made (`Settler.settle`).

Every attempt is recorded on its message and each device's result acted on: delivered
(the message counted delivered and its items noted once, on its first delivery); retry
later (parked in the delayed set); device invalid (deactivated); failed. Messages held
back (held out, suppressed, deferred) and devices found registered to another shopper
are recorded in the same round trip. The sends went out already, so a Redis error here
is retried here (`_patiently`), never by the task, whose retry would send again.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import redis
from redis.exceptions import NoScriptError

from push import DeliveryResult, Message, Outcome
from worker.contract import DELIVER
from worker.delivery.outbox import MessageRecord, Outbox
from worker.delivery.requests import DeliveryOutcome, DeliveryRequest
from worker.policy.contact import ContactPolicy
from worker.rules import Rule
from worker.shoppers.audit import Audit
from worker.shoppers.contacts import Contacts
from worker.shoppers.segment_index import SegmentIndex
from worker.shoppers.snapshot import DeviceRecord
from worker.shoppers.state import PendingMarks
from worker.store.client import StatePipeline, StateRedis, queued
from worker.store.delayed import DelayedJobs, Job
from worker.store.errors import is_transient
from worker.store.metrics import Metrics
from worker.store.scripts import Scripts

T = TypeVar("T")

_SETTLE_FIRST_WAIT_MAX_S = 0.2
"""The longest first wait of a settling that met a transient Redis failure (then twice
that); at least half of it is always waited, so that no retry comes at once."""


@dataclass
class MessageDelivery:
    """One request on its way through `MessageSender.deliver_many`: what it sends, and
    what came of it."""

    request: DeliveryRequest
    record: MessageRecord
    state: dict[str, str]  # as loaded
    rule: Rule | None
    targets: dict[str, DeviceRecord] = field(default_factory=dict)  # device id -> device
    sends: list[tuple[str, Message]] = field(default_factory=list)
    broken: list[tuple[str, str]] = field(default_factory=list)  # (device id, why) unsendable
    moved: list[tuple[str, float]] = field(default_factory=list)  # (device id, registered_at)
    unclaim: list[str] = field(default_factory=list)  # devices claimed, then held back
    result: DeliveryOutcome = field(default_factory=lambda: DeliveryOutcome())


class _FirstSent(NamedTuple):
    """A delivery a device took: where its first-delivery reply sits in the settling's
    replies, and whether it was counted ahead of that reply (not delivered before, as
    loaded)."""

    delivery: MessageDelivery
    at: int
    ahead: bool


class Settler:
    """Records what a batch of deliveries did, once their sends are made (module doc)."""

    def __init__(
        self,
        client: StateRedis,
        contacts: Contacts,
        policy: ContactPolicy,
        outbox: Outbox,
        audit: Audit,
        delayed: DelayedJobs,
        metrics: Metrics,
        segment_index: SegmentIndex,
        scripts: Scripts,
    ) -> None:
        self._client = client
        self._contacts = contacts
        self._policy = policy
        self._outbox = outbox
        self._audit = audit
        self._delayed = delayed
        self._metrics = metrics
        self._segment_index = segment_index
        self._scripts = scripts

    def settle(
        self,
        live: Sequence[MessageDelivery],
        outcomes: Sequence[Sequence[DeliveryResult]],
        held: Sequence[MessageDelivery],
        now: float,
        latencies: Sequence[tuple[str, float]],
        marks: PendingMarks | None,
    ) -> None:
        """Record every attempt and act on each device's result, for the whole batch in
        one round trip, with the metrics (each send by channel and outcome, the gateway
        latencies), `marks` (`MessageSender.deliver_many`) and the counts of a first
        delivery.

        A message is counted delivered, and its items noted (no repeats, attribution),
        once per message, as its first-delivery HSETNX's reply says: counted ahead of
        the reply, in the same round trip, when not delivered before as loaded (nearly
        all), and corrected after it; counted after it otherwise. The sends went out
        already, so a Redis error here is retried here, not by the task (which would send
        again); only the first try counts ahead, since a failed try may have landed
        (see `recount`)."""
        first_try = True

        def writes() -> tuple[list[Any], list[_FirstSent]]:
            nonlocal first_try
            ahead, first_try = first_try, False
            pipe = self._client.pipeline(transaction=False)
            for d in held:
                self._settle_held(d, now, pipe)
            for d in [*live, *held]:
                self._drop_moved(d, now, pipe)
            first_sent: list[_FirstSent] = []
            for d, results in zip(live, outcomes, strict=True):
                at = self._settle_one(d, results, now, pipe)
                if at is not None:
                    first_sent.append(_FirstSent(d, at, ahead and "delivered_at" not in d.state))
            sends = Counter(
                f"messages.{r.channel}.{r.outcome}" for results in outcomes for r in results
            )
            self._metrics.add(sends, pipe=pipe)
            self._metrics.observe_latency(latencies, pipe)
            self._count_delivered([f.delivery for f in first_sent if f.ahead], now, pipe)
            if marks is not None and not marks.cleared:
                marks.queue(pipe)
            return self._execute(pipe), first_sent

        def recount(replies: list[Any], first_sent: list[_FirstSent]) -> None:
            """Count the first deliveries not counted ahead; count back down those counted
            ahead whose reply says another delivery took the message first. After a
            failed first try, a later try's reply of 0 may mean the first try landed
            (its count ahead stands) or another delivery won: left as it is either way."""
            pipe = self._client.pipeline(transaction=False)
            late = [f.delivery for f in first_sent if replies[f.at] and not f.ahead]
            self._count_delivered(late, now, pipe)
            back: Counter[str] = Counter()  # counted ahead, but not the first delivery
            for f in first_sent:
                if f.ahead and not replies[f.at]:
                    back[f.delivery.record.rule] += 1
            for rule, n in back.items():
                self._audit.count(rule, "delivered", -n, pipe=pipe)
            if len(pipe):
                pipe.execute()

        replies, first_sent = self._patiently(writes)
        if marks is not None:
            marks.landed()
        self._patiently(lambda: recount(replies, first_sent))
        gone = {  # devices just deactivated leave the channel segments
            d.record.user_id
            for d, results in zip(live, outcomes, strict=True)
            if any(r.outcome is Outcome.DEVICE_INVALID for r in results)
        }
        if gone:
            self._patiently(lambda: self._segment_index.refresh_devices(gone, now))

    def _execute(self, pipe: StatePipeline) -> list[Any]:
        """Run the settling's pipeline; raise its first error as `execute` would. Its
        commands that met lost scripts (NOSCRIPT: Redis restarted or a replica promoted;
        a cluster's go by SHA alone) run again once the scripts are loaded, and only
        they: the others landed, and attempt records and counts are not idempotent."""
        commands = queued(pipe)
        replies = pipe.execute(raise_on_error=False)
        lost = [n for n, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if lost:
            self._scripts.load(self._client)
            again = self._client.pipeline(transaction=False)
            for n in lost:
                args, options = commands[n]
                again.execute_command(*args, **options)
            for n, reply in zip(lost, again.execute(raise_on_error=False), strict=True):
                replies[n] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _patiently(self, run: Callable[[], T], tries: int = 3) -> T:
        """`run` again if Redis fails transiently (`store/errors.py`): after a short wait,
        or, when Redis lost our scripts (restarted, a replica promoted), once they are
        loaded again. For the writes that record sends already made: a task retry
        would send again (and a lost reply may count something twice). The settling's
        own writes replay only what met lost scripts (`_execute`); a `run` that meets
        them here (the devices' segment entries) is safe to run again whole."""
        lost = False
        for attempt in range(tries):
            try:
                if lost:
                    self._scripts.load(self._client)
                    lost = False
                return run()
            except redis.RedisError as exc:
                if not is_transient(exc) or attempt == tries - 1:
                    raise
                if isinstance(exc, NoScriptError):
                    lost = True
                else:  # half of it at random: workers that met one failover spread out
                    time.sleep(_SETTLE_FIRST_WAIT_MAX_S * 2**attempt * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    def _count_delivered(
        self, deliveries: Sequence[MessageDelivery], now: float, pipe: StatePipeline
    ) -> None:
        """Count `deliveries` delivered (one HINCRBY a rule) and note their items (in
        `pipe`), as each message's first delivery."""
        delivered: Counter[str] = Counter()
        for d in deliveries:
            delivered[d.record.rule] += 1
            self._note_items(d.record, now, pipe)
        for rule, n in delivered.items():
            self._audit.count(rule, "delivered", n, pipe=pipe)

    def _settle_held(self, d: MessageDelivery, now: float, pipe: StatePipeline) -> None:
        """Queue the writes of a delivery that did not go out: held out (a holdout cell's
        message that passed every check), suppressed for good, or deferred (parked until
        its quiet hours end, the same request again)."""
        mid, why, action = d.record.id, d.result["reason"], d.result["action"]
        if action == "held_out":
            self._outbox.set_state(mid, "held_out", pipe, why)
            self._audit.count(d.record.rule, "held_out", pipe=pipe)
            self._note_items(d.record, now, pipe)
        elif action == "deferred":
            until = d.result["defer_until"]
            self._delayed.schedule(Job(f"deliver:{mid}", DELIVER, d.request.kwargs()), until, pipe)
            if d.state.get("state") != "sent":  # a deferred retry of a message sent elsewhere
                self._outbox.set_state(mid, "deferred", pipe, why)
            self._audit.count(d.record.rule, "deferred", pipe=pipe)
            self._metrics.add({"delivery.deferred": 1}, pipe=pipe)
        else:
            self._outbox.set_state(mid, "suppressed", pipe, why)
            self._audit.count(d.record.rule, "suppressed", pipe=pipe)
        for device_id in d.unclaim:  # claimed by this delivery a moment ago, never sent
            self._outbox.unclaim_device(mid, device_id, pipe)
        attempt = {"at": now, "attempt": d.request.attempt, action: why}
        self._outbox.add_attempts(mid, [attempt], pipe)

    def _note_items(self, record: MessageRecord, now: float, pipe: StatePipeline) -> None:
        """Note a message's items as pushed (the no-repeat step) and as its rule's, in its
        cell, for attribution (in `pipe`): on its first delivery, or when held out."""
        self._policy.record_items(record.user_id, record.items, now, pipe)
        self._audit.remember_items(
            record.user_id, record.items, record.id, record.rule, record.cell, now, pipe
        )

    def _drop_moved(self, d: MessageDelivery, now: float, pipe: StatePipeline) -> None:
        """Record the devices skipped as another shopper's, and take them off this
        shopper's list (in `pipe`)."""
        if not d.moved:
            return
        for device_id, registered_at in d.moved:
            self._contacts.drop_moved(d.record.user_id, device_id, registered_at, pipe)
        self._outbox.add_attempts(
            d.record.id,
            [
                {
                    "at": now,
                    "attempt": d.request.attempt,
                    "device_id": device_id,
                    "skipped": "registered to another shopper",
                }
                for device_id, _ in d.moved
            ],
            pipe,
        )
        self._metrics.add({"delivery.moved_device": len(d.moved)}, pipe=pipe)

    def _settle_one(
        self,
        d: MessageDelivery,
        results: Sequence[DeliveryResult],
        now: float,
        pipe: StatePipeline,
    ) -> int | None:
        """Queue one delivery's writes in `pipe`; returns the index of its first-delivery
        reply if a device took the message."""
        record, mid, attempt = d.record, d.record.id, d.request.attempt
        if not d.sends and not d.broken:
            # every device settled, or another live delivery is sending them
            d.result = {"action": "nothing_to_send", "message_id": mid}
            if not d.targets and d.state.get("state") != "sent":
                self._outbox.set_state(mid, "failed", pipe, "no device to send to")
                self._audit.count(record.rule, "failed", pipe=pipe)
            return None
        retry: list[str] = []
        retry_after = 0.0
        delivered = 0
        self._outbox.add_attempts(
            mid,
            [
                {"at": now, "attempt": attempt, "device_id": device_id, **result.to_dict()}
                for (device_id, _), result in zip(d.sends, results, strict=True)
            ]
            + [
                {"at": now, "attempt": attempt, "device_id": device_id, "error": why}
                for device_id, why in d.broken
            ],
            pipe,
        )
        for device_id, _ in d.broken:
            self._outbox.settle_device(mid, device_id, "failed", pipe)
        for (device_id, _), result in zip(d.sends, results, strict=True):
            if result.outcome is Outcome.DELIVERED:
                delivered += 1
                status = "sent"
            elif (
                result.outcome in {Outcome.RETRY, Outcome.CREDENTIALS}
                and result.retry_after is not None
            ):
                retry.append(device_id)
                retry_after = max(retry_after, result.retry_after)
                status = "retry"
            elif result.outcome is Outcome.DEVICE_INVALID:
                since = result.invalid_since.timestamp() if result.invalid_since else None
                self._contacts.deactivate(record.user_id, device_id, since, result.reason, pipe)
                status = "invalid"
            else:
                status = "failed"
            self._outbox.settle_device(mid, device_id, status, pipe)
        first_at = None
        if delivered:
            self._outbox.set_state(mid, "sent", pipe)
            first_at = len(pipe)
            self._outbox.first_delivery(mid, now, pipe)
        if retry:
            job = Job(f"deliver:{mid}", DELIVER, d.request.retry_kwargs(retry))
            self._delayed.schedule(job, now + retry_after, pipe=pipe)
            if not delivered:
                self._outbox.set_state(mid, "retrying", pipe)
        elif not delivered and d.state.get("state") != "sent":
            self._outbox.set_state(mid, "failed", pipe, "no device took it")
            self._audit.count(record.rule, "failed", pipe=pipe)
        d.result = {
            "action": "sent" if delivered else ("retrying" if retry else "failed"),
            "message_id": mid,
            "delivered": delivered,
            "retry_devices": len(retry),
            "retry_after": retry_after if retry else None,
        }
        return first_at
