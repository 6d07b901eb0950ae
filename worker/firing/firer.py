"""Firing rules for shoppers: re-check, recommend, apply the policy, queue the messages.

`Firer.fire_many(jobs)` is what a track task does with the triggers due at once, and
what the `pushrec.fire` task does with the scheduler's due jobs. For each job it
re-checks the rule's condition against the shopper's state now (buying what is in the
cart within the delay cancels the cart reminder), picks the items, runs the contact
policy and acts on its verdict: queue the message (created once per id), park the job
until quiet hours end, or record why nothing was sent. A rule with a coupon issues it from
its pool for the message about to be composed (idempotent per message id; the treated
cell only: a holdout message is never sent, so it spends no budget); a refused issue
follows the rule's `coupon.on_refused` (send without, or suppress at step `coupon`) and
is recorded on the decision. Every outcome leaves a decision
record on the shopper. The whole batch shares one round trip per stage.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, Protocol, TypeVar

from indexing import LoadedIndex
from push import fingerprint
from push.errors import PushError
from worker.contract import FIRE
from worker.coupons import Coupons, IssuedCoupon, Refusal
from worker.coupons.reminders import EXTRA_CODE
from worker.delivery.outbox import Creation, MessageRecord, Outbox, message_id
from worker.delivery.requests import FiringWrites, FreshMessage
from worker.delivery.sender import ReadAhead
from worker.firing.compose import Composer
from worker.firing.index_holder import IndexHolder
from worker.firing.recommend import (
    Candidate,
    Pool,
    PoolRequest,
    ShopperView,
    candidate_pool,
    candidate_pools,
    choose,
)
from worker.policy.contact import ContactPolicy, PolicyReads
from worker.policy.jobs import FireJob
from worker.policy.kinds import FIRE_READS, KINDS
from worker.rules import Rule, enabled_rules
from worker.settings import Settings
from worker.shoppers.audit import Audit, Decision, FireAction, MessageSummary
from worker.shoppers.catalog import Catalog
from worker.shoppers.snapshot import Shopper, ShopperReads
from worker.shoppers.state import PendingMarks, StateStore
from worker.store.client import StatePipeline, StateRedis
from worker.store.delayed import DelayedJobs, Job
from worker.store.errors import describe, stack
from worker.store.keys import Keys
from worker.store.metrics import Metrics

log = logging.getLogger(__name__)


_READS = ShopperReads(FIRE_READS | {"profile", "devices", "preferences"})

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


@dataclass(frozen=True)
class DryFiring:
    """What firing one job would do (`Firer.dry_fire`)."""

    decision: Decision  # with action, reason and step
    record: MessageRecord | None  # the message it would queue
    defer_until: float | None  # when quiet hours would let it go


@dataclass(frozen=True)
class _Shopper:
    state: Shopper
    view: ShopperView
    policy: PolicyReads
    known: bool  # has a profile or a device: not erased, not expired


@dataclass
class _Firing:
    """One job on its way through `fire_many`."""

    job: FireJob
    rule: Rule
    mid: str
    decision: Decision
    action: FireAction | Literal[""] = ""  # "" until decided
    reason: str = ""
    step: str = ""  # what settled it: a policy step, or condition, recommend, compose, error
    record: MessageRecord | None = None
    defer_until: float | None = None
    held: IssuedCoupon | None = None  # a reminder's code, still the shopper's
    before: str = ""  # the state of its message before this try; "" when there is none
    devices: tuple[str, ...] = ()  # its shopper's active devices, as read


class Firer:
    def __init__(
        self,
        client: StateRedis,
        keys: Keys,
        settings: Settings,
        state: StateStore,
        catalog: Catalog,
        policy: ContactPolicy,
        outbox: Outbox,
        audit: Audit,
        delayed: DelayedJobs,
        index: IndexHolder | None,
        delivery: Delivery,
        metrics: Metrics,
        coupons: Coupons,
    ) -> None:
        self._client = client
        self._keys = keys
        self._settings = settings
        self._rules = enabled_rules(settings.all_rules)
        self._state = state
        self._catalog = catalog
        self._policy = policy
        self._outbox = outbox
        self._audit = audit
        self._delayed = delayed
        self._index = index
        self._delivery = delivery
        self._metrics = metrics
        self._coupons = coupons
        self._composer = Composer(settings.all_rules, settings.currency)

    # --- reading the shoppers -----------------------------------------------------------
    def _read(
        self, firings: Sequence[_Firing], now: float, ahead: StatePipeline | None = None
    ) -> list[_Shopper]:
        """Everything firing reads of each shopper, for the whole batch in one round trip
        (`_queue_read`). `ahead`: the caller's writes, sent first in that round trip
        (alone when there is nothing to read)."""
        pipe = ahead if ahead is not None else self._client.pipeline(transaction=False)
        theirs = len(pipe)
        if not firings:
            pipe.execute()  # an empty pipeline makes no round trip
            return []
        feed_since = self._queue_read(firings, now, pipe)
        return self._parse_read(firings, feed_since, iter(pipe.execute()[theirs:]))

    def _queue_read(self, firings: Sequence[_Firing], now: float, pipe: StatePipeline) -> int:
        """Queue in `pipe` what firing reads of each shopper, and the catalog's change
        feed (so the catalog reads after it need no round trip when the entries are
        cached). Returns the mark the feed is read past, for `_parse_read`."""
        feed_since = self._catalog.queue_feed(pipe)  # `_choose` reads the catalog as of now
        for f in firings:
            self._outbox.queue_state_read(f.mid, pipe)
            _READS.queue(pipe, self._keys, f.job.user_id)
            self._policy.queue_reads(pipe, f.rule, f.job.user_id, f.mid, now)
        return feed_since

    def _parse_read(
        self, firings: Sequence[_Firing], feed_since: int, replies: Iterator[Any]
    ) -> list[_Shopper]:
        """Each firing's shopper from the replies of `_queue_read`'s commands."""
        self._catalog.apply_feed(feed_since, next(replies), next(replies))
        shoppers = []
        for f in firings:
            f.before = next(replies) or ""
            state = _READS.parse(f.job.user_id, replies)
            known = bool(state.profile or state.devices)
            view = ShopperView(
                recent=state.recent,
                purchased=frozenset(state.purchases),
                cart=frozenset(state.cart_added),
                history=state.history,
            )
            shoppers.append(_Shopper(state, view, PolicyReads.from_replies(replies), known))
        return shoppers

    def read_first(self, jobs: Sequence[FireJob], now: float) -> FiringReads:
        """The reads of firing `jobs` at `now`, to be made in a round trip the caller makes
        anyway (a `BatchReads` for `StateStore.apply_events`, whose scripts apply the
        events that trigger the jobs) and then handed to `fire_many`, which needs no read
        of its own when it fires those very jobs."""
        results, firings = self._firings(jobs, now)
        return FiringReads(self, list(jobs), now, results, firings)

    # --- firing -----------------------------------------------------------------------
    def fire_many(
        self,
        jobs: Sequence[FireJob],
        now: float,
        owner: str = "",
        ahead: StatePipeline | None = None,
        marks: PendingMarks | None = None,
        read: FiringReads | None = None,
    ) -> list[Decision]:
        """Fire each job's rule for its shopper, returning each one's decision. A batch
        of events or a fan-out costs one round trip per stage (read, catalog, create,
        write), not one per job, and its messages go to delivery together, named by
        `owner` (the id of the task firing them). A job that fails with an unexpected
        error is recorded as `error` and changes nothing for the others. `read`: the
        reads of these jobs made already (`read_first`), used when they were made for
        these very jobs at this `now` (else read again). `ahead`: writes of the caller's
        that must land before the messages are handed to delivery, sent whatever this
        decides (an error among them raises) in the first round trip made anyway: the
        read's, or with the reads made already the create's (the writes' when nothing
        is created); the pipeline is then empty, the caller's again. `marks`: the
        pending marks of the caller's fresh events, which a delivery in this task clears
        once the writes have landed: every other reaction to those events (jobs parked
        for later included) must be in `ahead` (`PendingMarks`)."""
        made = read.made_for(jobs, now) if read is not None else None
        if made is None:
            results, firings = self._decide_all(jobs, now, ahead=ahead)
            ahead = None  # sent with the read
        else:
            results, firings = self._decide_read(*made, now)
        self._write(firings, now, owner, marks, ahead)
        return results

    def dry_fire(self, jobs: Sequence[FireJob], now: float) -> list[DryFiring]:
        """What `fire_many` would decide for each job at `now`, writing nothing: the
        same reads, recommendation, policy and composition, with the send step left out
        (a campaign's dry run). One entry per job, in order."""
        results, firings = self._decide_all(jobs, now, dry=True)
        by_decision = {id(f.decision): f for f in firings}
        out = []
        for decision in results:
            f = by_decision.get(id(decision))
            if f is None:  # dropped or repeated before deciding
                out.append(DryFiring(decision, None, None))
                continue
            decision["action"] = f.action or "error"
            decision["reason"] = f.reason
            decision["step"] = f.step or "policy"
            out.append(DryFiring(decision, f.record, f.defer_until))
        return out

    def _decide_all(
        self,
        jobs: Sequence[FireJob],
        now: float,
        *,
        dry: bool = False,
        ahead: StatePipeline | None = None,
    ) -> tuple[list[Decision], list[_Firing]]:
        """Each job's decision (in order) and the firings decided: everything up to the
        writes (`dry`: a coupon is priced, not issued; `ahead`: see `fire_many`)."""
        results, firings = self._firings(jobs, now)
        shoppers = self._read(firings, now, ahead)
        return self._decide_read(results, firings, shoppers, now, dry)

    def _firings(self, jobs: Sequence[FireJob], now: float) -> tuple[list[Decision], list[_Firing]]:
        """Each job's decision (in order, to be filled) and the firings to decide: a job
        of no enabled rule is dropped, one trigger twice in the batch is one message."""
        results: list[Decision] = []
        firings: list[_Firing] = []
        seen: set[str] = set()
        for job in jobs:
            rule = self._rules.get(job.rule)
            if rule is None:
                results.append({"action": "dropped", "reason": f"no enabled rule {job.rule!r}"})
                continue
            mid = message_id(rule.name, job.user_id, job.trigger_id)
            if mid in seen:  # one trigger twice in the batch: one message
                results.append({"action": "duplicate", "message_id": mid})
                continue
            seen.add(mid)
            decision: Decision = {
                "at": now,
                "rule": rule.name,
                "trigger": {"id": job.trigger_id, "ts": job.trigger_ts, "items": list(job.items)},
                "message_id": mid,
            }
            firings.append(_Firing(job, rule, mid, decision))
            results.append(decision)
        return results, firings

    def _decide_read(
        self,
        results: list[Decision],
        firings: list[_Firing],
        shoppers: list[_Shopper],
        now: float,
        dry: bool = False,
    ) -> tuple[list[Decision], list[_Firing]]:
        """Decide `firings` on what was read of their `shoppers` (`_decide_all`)."""
        firings, shoppers = _drop_unknown(firings, shoppers)
        for f in firings:
            if f.before:  # an earlier try queued its message; what it decided stands
                f.action = "duplicate"
        index = self._index.index if self._index is not None else None
        pools = self._pools(firings, shoppers, index, now)
        chosen, facts = self._choose(firings, pools, index)
        for f, shopper, pool, candidates in zip(firings, shoppers, pools, chosen, strict=True):
            if f.action:  # settled: a repeat, the condition no longer holds, or an error
                continue
            f.decision["candidates"] = [c.as_dict() for c in candidates]
            if index is not None:
                f.decision["index_version"] = index.version
            if not candidates:
                f.action, f.reason, f.step = "suppress", "no items to offer", "recommend"
                continue
            if _lost_its_own_items(f.rule, pool, candidates):
                why = "its own items are unavailable (out of stock or withdrawn)"
                f.action, f.reason, f.step = "suppress", why, "recommend"
                continue
            _isolated(f, self._decide, f, shopper, candidates, facts, now, dry)
        return results, firings

    def _pools(
        self,
        firings: Sequence[_Firing],
        shoppers: Sequence[_Shopper],
        index: LoadedIndex | None,
        now: float,
    ) -> list[Pool | None]:
        """Each firing's candidate pool, or None once it is settled: its condition no
        longer holds (re-checked against the shopper's state now; a reminder's code must
        still be the shopper's, unredeemed), or an error."""
        live: list[list[tuple[str, float]]] = []  # read once, by the first pool needing it

        def trending() -> list[tuple[str, float]]:
            if not live:
                most = max(f.rule.items for f in firings)
                live.append(self._state.trending_items(now, 24, 4 * most))
            return live[0]

        def request(f: _Firing, shopper: _Shopper) -> PoolRequest | None:
            if f.action:  # a repeat
                return None
            kind = KINDS[f.rule.kind]
            own_items, why_not = kind.holds_at_fire(
                f.rule, f.job.trigger_ts, f.job.items, shopper.state
            )
            if not why_not and (code := f.job.extra.get(EXTRA_CODE)):
                f.held = self._coupons.held(code, f.job.user_id, now)
                why_not = "" if f.held else "the code was redeemed or has expired"
            if why_not:
                f.action, f.reason, f.step = "suppress", f"condition: {why_not}", "condition"
                return None
            return PoolRequest(shopper.view, f.rule.items, own_items, kind.offers_cart)

        asked = [_isolated(f, request, f, s) for f, s in zip(firings, shoppers, strict=True)]
        wanted = [(f, r) for f, r in zip(firings, asked, strict=True) if r is not None]
        made: list[Pool | None]
        try:
            made = list(candidate_pools(index, [r for _, r in wanted], now=now, trending=trending))
        except Exception:  # one firing's bad input: find it, the others go on
            made = [
                _isolated(f, candidate_pool, index, r.shopper, k=r.k, now=now,
                          trigger_items=r.trigger_items, allow_cart=r.allow_cart,
                          trending=trending)
                for f, r in wanted
            ]  # fmt: skip
        pools = {id(f): p for (f, _), p in zip(wanted, made, strict=True)}
        return [pools.get(id(f)) for f in firings]

    def _choose(
        self, firings: Sequence[_Firing], pools: Sequence[Pool | None], index: LoadedIndex | None
    ) -> tuple[list[list[Candidate]], dict[str, Mapping[str, str]]]:
        """Each pool's items, and the catalog entries read for them. Most candidates pass
        the filters, so the catalog is read for the head of every pool first (one round
        trip for the entries not cached, none when all are: `_read` read the change feed),
        and again, for a head twice as long, only for pools whose head could not fill the
        message."""
        facts: dict[str, Mapping[str, str]] = {}
        read: set[str] = set()
        heads = {  # firing -> (its pool, how many of its candidates to look at)
            n: (pool, 2 * f.rule.items + 2)
            for n, (f, pool) in enumerate(zip(firings, pools, strict=True))
            if pool is not None
        }
        chosen: list[list[Candidate]] = [[] for _ in firings]
        while heads:
            wanted = list(
                dict.fromkeys(
                    i
                    for pool, size in heads.values()
                    for i in pool.head(size).item_ids()
                    if i not in read
                )
            )
            facts.update(self._catalog.get_many(wanted, feed_read=True) if wanted else {})
            read.update(wanted)
            for n, (pool, size) in list(heads.items()):
                rule = firings[n].rule
                chosen[n] = choose(
                    index, pool.head(size), facts, k=rule.items,
                    include_trigger_items=KINDS[rule.kind].leads_with_own_items,
                )  # fmt: skip
                if len(chosen[n]) < rule.items and size < len(pool.candidates):
                    heads[n] = (pool, 2 * size)
                else:
                    del heads[n]
        return chosen, facts

    def _decide(
        self,
        f: _Firing,
        shopper: _Shopper,
        candidates: list[Candidate],
        facts: Mapping[str, Mapping[str, str]],
        now: float,
        dry: bool = False,
    ) -> None:
        """Run the contact policy and settle what this firing does."""
        devices = shopper.state.active_devices()
        f.devices = tuple(devices)
        active = [d["channel"] for d in devices.values()]
        verdict = self._policy.decide(
            f.rule,
            f.job.user_id,
            [c.item_id for c in candidates],
            active,
            shopper.state.preferences,
            now,
            shopper.policy,
            item_rule=KINDS[f.rule.kind].leads_with_own_items,
        )
        f.decision["policy"] = verdict.as_dict()
        items = [c.item_id for c in candidates if c.item_id in set(verdict.items)]
        f.reason = verdict.reason
        f.step = verdict.steps[-1].name if verdict.steps else "policy"
        if verdict.action == "suppress":
            f.action = "suppress"
        elif verdict.action == "defer":
            f.action, f.defer_until = "defer", verdict.defer_until
        else:
            treated = verdict.cell == "treated"
            coupon = self._coupon(f, items, facts, now, dry) if treated else None
            if f.action:  # the coupon was refused and the rule suppresses without one
                return
            try:
                f.record = self._composer.compose(
                    f.rule, f.job, f.mid, items, facts, verdict.channels,
                    shopper.state.preferences, now, verdict.cell, coupon,
                )  # fmt: skip
            except PushError as exc:  # a template bug: nothing is sent, the reason is kept
                f.action, f.reason, f.step = "suppress", f"compose: {exc}", "compose"
                return
            # a holdout cell's message goes the treated one's way up to the gateway
            f.action, f.reason = "queued", ""
            f.step = "holdout" if verdict.cell == "holdout" else "all_passed"

    def _coupon(
        self,
        f: _Firing,
        items: list[str],
        facts: Mapping[str, Mapping[str, str]],
        now: float,
        dry: bool,
    ) -> IssuedCoupon | None:
        """Issue the rule's coupon for this message (a percent offer's face value taken of
        the lead item's price), or settle a refusal by the rule's policy. A reminder of a
        code (`coupons/reminders.py`) shows that code, if the shopper still holds it. A
        dry run prices the coupon it would issue and issues none: its message shows the
        offer with a stand-in code."""
        if f.held is not None:  # checked with the rule's condition (`_pools`)
            f.decision["coupon"] = f.held.as_dict()
            return f.held
        spec = f.rule.coupon
        if spec is None:
            return None
        lead = facts.get(items[0], {}) if items else {}
        basis = float(lead.get("price") or 0.0)
        source = f"{'campaign' if f.rule.kind == 'campaign' else 'rule'}:{f.rule.name}"
        if dry:
            priced = self._coupons.stand_in(
                spec, source=source, message_id=f.mid, user_id=f.job.user_id, now=now, basis=basis
            )
            f.decision["coupon"] = {"pool": spec.pool, "face_value": priced.face_value}
            return priced
        issued = self._coupons.issue(
            spec, source=source, message_id=f.mid, user_id=f.job.user_id, now=now, basis=basis
        )
        if isinstance(issued, Refusal):
            f.decision["coupon"] = {"pool": issued.pool, "refused": issued.reason}
            if spec.on_refused == "suppress":
                f.action, f.reason, f.step = "suppress", f"coupon: {issued.reason}", "coupon"
            return None
        f.decision["coupon"] = issued.as_dict()
        return issued

    def _write(
        self,
        firings: Sequence[_Firing],
        now: float,
        owner: str,
        marks: PendingMarks | None,
        ahead: StatePipeline | None,
    ) -> None:
        """Create the messages (once per id), then record every decision, count it, park
        deferrals, and hand the messages to delivery (which notes their items for
        attribution, when sent or held out). A repeat whose message is still queued goes
        to delivery again: the try that queued it may have died before handing it on.
        `ahead`: the caller's writes not sent yet, first in the first round trip.

        Where the messages are delivered in this task, their send-time re-check rides on
        the create's round trip (read for every message created, used for those this
        very try stored), and the writes on the delivery's first round trip (its caps
        and claims: `FiringWrites`): they land before anything is sent."""
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
        self, sends: Sequence[_Firing], owner: str, ahead: StatePipeline | None
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

    def _resume(self, repeats: Sequence[_Firing]) -> None:
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

    def _unrecorded(self, firings: Sequence[_Firing]) -> set[str]:
        """The message ids of `firings` (messages that exist, still queued) whose decision
        the shopper's audit lacks: an earlier run of this task created the message and
        died before recording it (one read per shopper, only on this rare path)."""
        users = sorted({f.job.user_id for f in firings})
        recorded = {user: {d.get("message_id") for d in self._audit.decisions(user)}
                    for user in users}  # fmt: skip
        return {f.mid for f in firings if f.mid not in recorded[f.job.user_id]}

    def _record(self, f: _Firing, now: float, writes: StatePipeline) -> None:
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


@dataclass(eq=False)
class FiringReads:
    """What firing some jobs reads, read in a round trip of the caller's
    (`Firer.read_first`): a `StateStore.apply_events` `BatchReads`, whose replies
    `fire_many` uses when it fires those very jobs, once."""

    _firer: Firer
    _jobs: list[FireJob]
    _now: float
    _results: list[Decision]
    _firings: list[_Firing]
    _feed_since: int = 0
    _shoppers: list[_Shopper] | None = None  # read, not used yet

    def queue(self, pipe: StatePipeline) -> None:
        self._feed_since = self._firer._queue_read(self._firings, self._now, pipe)

    def take(self, replies: Iterator[Any]) -> None:
        self._shoppers = self._firer._parse_read(self._firings, self._feed_since, replies)

    def made_for(
        self, jobs: Sequence[FireJob], now: float
    ) -> tuple[list[Decision], list[_Firing], list[_Shopper]] | None:
        """The decisions to fill, the firings and what was read of their shoppers, if
        it was read for `jobs` at `now` (and not used before); else None."""
        if self._shoppers is None or now != self._now or list(jobs) != self._jobs:
            return None
        shoppers, self._shoppers = self._shoppers, None
        return self._results, self._firings, shoppers


def _message_summary(record: MessageRecord) -> MessageSummary:
    """What the shopper's audit keeps of a queued message."""
    return MessageSummary(
        title=record.title, body=record.body, items=record.items, cell=record.cell,
        coupon=record.coupon,
    )  # fmt: skip


def _lost_its_own_items(rule: Rule, pool: Pool | None, chosen: Sequence[Candidate]) -> bool:
    """A message about its own items (a price drop, a restock, the cart) that none of them
    can lead: it would be sent without what it is about."""
    own = pool.trigger_items if pool is not None else ()
    leads = KINDS[rule.kind].leads_with_own_items
    return leads and bool(own) and not any(c.source == "trigger" for c in chosen)


def _drop_unknown(
    firings: list[_Firing], shoppers: list[_Shopper]
) -> tuple[list[_Firing], list[_Shopper]]:
    """Leave out, writing nothing, the firings of shoppers pushrec knows nothing of (no
    profile, no device): a job parked before its shopper was erased (or expired) must not
    bring their keys back. Such a shopper could not be reached anyway (no device)."""
    kept = [(f, s) for f, s in zip(firings, shoppers, strict=True) if s.known]
    for f, s in zip(firings, shoppers, strict=True):
        if not s.known:
            f.decision["action"] = "dropped"
            f.decision["reason"] = "no such shopper (erased or expired)"
    return [f for f, _ in kept], [s for _, s in kept]


T = TypeVar("T")
P = ParamSpec("P")


def _isolated(f: _Firing, step: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | None:
    """Run one firing's own step; a bug in it settles that firing as `error` (logged,
    recorded and counted as failed) instead of failing the whole batch."""
    try:
        return step(*args, **kwargs)
    except Exception as exc:
        reason = describe(exc)
        log.error("rule %s for shopper %s failed: %s\n%s",
                  f.rule.name, fingerprint(f.job.user_id), reason, stack(exc))  # fmt: skip
        f.action, f.reason, f.step = "error", reason, "error"
        return None
