"""What firing writes once every job is decided: the messages (created once per id), every
decision on its shopper, the counts, the deferrals parked, and the messages handed to
delivery (`FiringWriter.write`).

A repeat whose message is still queued goes to delivery again: the try that queued it
may have died before handing it on (and, if its decision is missing, before recording
it: `_resume`). Where the messages are delivered in this task, their send-time re-check
rides on the create's round trip, and the writes on the delivery's first round trip (its
caps and claims: `FiringWrites`): they land before anything is sent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from worker.contract import FIRE
from worker.delivery.outbox import Creation, MessageRecord, Outbox
from worker.delivery.requests import FiringWrites, FreshMessage
from worker.delivery.sender import ReadAhead
from worker.firing.in_flight import Firing
from worker.shoppers.audit import Audit, MessageSummary
from worker.shoppers.state import PendingMarks
from worker.store.client import StatePipeline, StateRedis
from worker.store.delayed import DelayedJobs, Job
from worker.store.metrics import Metrics

# The rule-stats field each action counts under (others: the action's own name).
_STATS_FIELD = {"suppress": "suppressed", "defer": "deferred", "error": "failed"}


class Delivery(Protocol):
    """Where fired messages go: sent in the task that fired them, or by deliver tasks on
    the push queue. `worker.service.runtime.Runtime` is the one there is (documented
    there); firing sees it through this, as it may not import the service layer."""

    def queue_recheck(
        self, fresh: Mapping[str, FreshMessage], owner: str, pipe: StatePipeline
    ) -> Callable[[Iterator[Any]], ReadAhead] | None: ...

    def deliver_queued(
        self,
        message_ids: list[str],
        owner: str,
        fresh: Mapping[str, FreshMessage],
        read_ahead: ReadAhead | None = None,
        marks: PendingMarks | None = None,
        writes: FiringWrites | None = None,
    ) -> None: ...


class FiringWriter:
    """Writes what a batch of firings decided and hands their messages to delivery."""

    def __init__(
        self,
        client: StateRedis,
        outbox: Outbox,
        audit: Audit,
        delayed: DelayedJobs,
        delivery: Delivery,
        metrics: Metrics,
    ) -> None:
        self._client = client
        self._outbox = outbox
        self._audit = audit
        self._delayed = delayed
        self._delivery = delivery
        self._metrics = metrics

    def write(
        self,
        firings: Sequence[Firing],
        now: float,
        owner: str,
        marks: PendingMarks | None,
        ahead: StatePipeline | None,
    ) -> None:
        """Write what `firings` decided (module doc), the messages named by `owner`.
        `ahead`: the caller's writes not sent yet, first in the first round trip; `marks`:
        see `Firer.fire_many`."""
        sends = [f for f in firings if f.record is not None]
        created, read_ahead = self._create(sends, owner, ahead) if sends else ([], None)
        for f, (new, before, _) in zip(sends, created, strict=True):
            if not new:  # queued by a concurrent try since this one read its state
                f.action, f.before = "duplicate", before
        repeats = [f for f in firings if f.action == "duplicate" and f.before == "queued"]
        self._resume(repeats)
        deliver: list[str] = []
        fresh: dict[str, FreshMessage] = {}
        writes = (
            ahead if ahead is not None and not sends else self._client.pipeline(transaction=False)
        )
        for f, (new, _, stored_now) in zip(sends, created, strict=True):
            if new and f.record is not None:
                self._outbox.mark_queued(f.record, writes)
                deliver.append(f.mid)
                if stored_now:
                    fresh[f.mid] = FreshMessage(f.record, f.devices)
                f.decision["message"] = _message_summary(f.record)
        for f in repeats:
            if f.record is not None:
                self._outbox.mark_queued(f.record, writes)
                deliver.append(f.mid)
        stats: Counter[tuple[str, str]] = Counter()  # (rule, field): one HINCRBY a batch
        decided: Counter[str] = Counter()
        for f in firings:
            if f.action == "duplicate":
                f.decision["action"] = "duplicate"
                continue
            self._record(f, now, writes)
            stats[f.rule.name, "fired"] += 1
            stats[f.rule.name, _STATS_FIELD.get(f.action, f.action)] += 1
            decided[f"decisions.{f.action}.{f.step or 'policy'}"] += 1
        for (rule, name), n in stats.items():
            self._audit.count(rule, name, n, pipe=writes)
        self._metrics.add(decided, pipe=writes)
        if not deliver:
            writes.execute()  # an error among them raises: the task's to retry
            return
        self._delivery.deliver_queued(
            deliver, owner, fresh, read_ahead, marks, FiringWrites(writes)
        )

    def _create(
        self, sends: Sequence[Firing], owner: str, ahead: StatePipeline | None
    ) -> tuple[list[Creation], ReadAhead | None]:
        """Create the messages of `sends`, after the caller's `ahead` writes, in one round
        trip (an error among either raises: the task's to retry), with their send-time
        re-check after them where this task delivers them. Returns what the create did,
        and the re-check of the messages this very try stored (another try's stored
        record is read again by delivery, as stored); its replies are delivery's to
        handle, parsed there."""
        records = [f.record for f in sends if f.record is not None]
        pipe = ahead if ahead is not None else self._client.pipeline(transaction=False)
        theirs = len(pipe)
        self._outbox.queue_create(records, pipe)
        own = len(pipe)
        maybe = {f.mid: FreshMessage(r, f.devices) for f, r in zip(sends, records, strict=True)}
        recheck = self._delivery.queue_recheck(maybe, owner, pipe)
        replies = pipe.execute(raise_on_error=False)
        for reply in replies[:own]:
            if isinstance(reply, Exception):
                raise reply
        created = self._outbox.created(records, iter(replies[theirs:own]))
        if recheck is None:
            return created, None
        read = recheck(iter(replies[own:]))
        stored = {r.id for r, c in zip(records, created, strict=True) if c.stored}
        return created, lambda: {mid: r for mid, r in read().items() if mid in stored}

    def _resume(self, repeats: Sequence[Firing]) -> None:
        """Load the messages of `repeats` (still queued by an earlier try) and settle as
        queued, with the stored message, those whose decision the shopper's audit lacks:
        that try died between creating the message and recording its decision. The rest
        stay duplicates. Two reads, only on this rare path."""
        if not repeats:
            return
        loaded = self._outbox.load_many([f.mid for f in repeats])
        unrecorded = self._unrecorded(repeats)
        for f, (record, _) in zip(repeats, loaded, strict=True):
            f.record = record
            if record is not None and f.mid in unrecorded:
                f.action, f.reason = "queued", ""
                f.step = "holdout" if record.cell == "holdout" else "all_passed"
                f.decision["message"] = _message_summary(record)
                f.decision["resumed"] = True  # decided by the try that died; policy not re-run

    def _unrecorded(self, firings: Sequence[Firing]) -> set[str]:
        """The message ids of `firings` (messages that exist, still queued) whose decision
        the shopper's audit lacks: an earlier run of this task created the message and
        died before recording it (one read per shopper, only on this rare path)."""
        users = sorted({f.job.user_id for f in firings})
        recorded = {user: {d.get("message_id") for d in self._audit.decisions(user)}
                    for user in users}  # fmt: skip
        return {f.mid for f in firings if f.mid not in recorded[f.job.user_id]}

    def _record(self, f: Firing, now: float, writes: StatePipeline) -> None:
        assert f.action, "every firing is decided before it is recorded"
        f.decision["action"] = f.action
        f.decision["reason"] = f.reason
        f.decision["step"] = f.step or "policy"
        self._audit.record_decision(f.job.user_id, f.decision, pipe=writes)
        if f.action == "defer":
            assert f.defer_until is not None
            self._delayed.schedule(
                Job(f"defer:{f.mid}", FIRE, f.job.kwargs()), f.defer_until, pipe=writes
            )


def _message_summary(record: MessageRecord) -> MessageSummary:
    """What the shopper's audit keeps of a queued message."""
    return MessageSummary(
        title=record.title, body=record.body, items=record.items, cell=record.cell,
        coupon=record.coupon,
    )  # fmt: skip
