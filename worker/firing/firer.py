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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from indexing import LoadedIndex
from push.errors import PushError
from worker.coupons import Coupons, IssuedCoupon, Refusal
from worker.coupons.reminders import EXTRA_CODE
from worker.delivery.outbox import MessageRecord, Outbox, message_id
from worker.firing.compose import Composer
from worker.firing.in_flight import Firing, isolated
from worker.firing.index_holder import IndexHolder
from worker.firing.reads import FiringReader, FiringReads, ShopperRead
from worker.firing.recommend import (
    Candidate,
    Pool,
    PoolRequest,
    candidate_pool,
    candidate_pools,
    choose,
)
from worker.firing.writes import Delivery, FiringWriter
from worker.policy.contact import ContactPolicy
from worker.policy.jobs import FireJob
from worker.policy.kinds import KINDS
from worker.rules import Rule, enabled_rules
from worker.settings import Settings
from worker.shoppers.audit import Audit, Decision
from worker.shoppers.catalog import Catalog
from worker.shoppers.snapshot import Part
from worker.shoppers.state import PendingMarks, StateStore
from worker.store.client import StatePipeline, StateRedis
from worker.store.delayed import DelayedJobs
from worker.store.keys import Keys
from worker.store.metrics import Metrics


@dataclass(frozen=True)
class DryFiring:
    """What firing one job would do (`Firer.dry_fire`)."""

    decision: Decision  # with action, reason and step
    record: MessageRecord | None  # the message it would queue
    defer_until: float | None  # when quiet hours would let it go


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
        self._rules = enabled_rules(settings.all_rules)
        self._state = state
        self._catalog = catalog
        self._policy = policy
        self._index = index
        self._coupons = coupons
        self._composer = Composer(settings.all_rules, settings.currency)
        self._reader = FiringReader(client, keys, catalog, outbox, policy)
        self._writer = FiringWriter(client, outbox, audit, delayed, delivery, metrics)

    def read_first(
        self, jobs: Sequence[FireJob], now: float, extra_parts: frozenset[Part] = frozenset()
    ) -> FiringReads:
        """The reads of firing `jobs` at `now`, to be made in a round trip the caller makes
        anyway (a `BatchReads` for `StateStore.apply_events`, whose scripts apply the
        events that trigger the jobs) and then handed to `fire_many`, which needs no read
        of its own when it fires those very jobs. `extra_parts`: more of each shopper to
        read, for the batch's `FollowUp` to take from these reads (`ShopperSource`)."""
        results, firings = self._firings(jobs, now)
        return FiringReads(self._reader, list(jobs), now, results, firings, extra_parts)

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
        self._writer.write(firings, now, owner, marks, ahead)
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
    ) -> tuple[list[Decision], list[Firing]]:
        """Each job's decision (in order) and the firings decided: everything up to the
        writes (`dry`: a coupon is priced, not issued; `ahead`: see `fire_many`)."""
        results, firings = self._firings(jobs, now)
        shoppers = self._reader.read(firings, now, ahead)
        return self._decide_read(results, firings, shoppers, now, dry)

    def _firings(self, jobs: Sequence[FireJob], now: float) -> tuple[list[Decision], list[Firing]]:
        """Each job's decision (in order, to be filled) and the firings to decide: a job
        of no enabled rule is dropped, one trigger twice in the batch is one message."""
        results: list[Decision] = []
        firings: list[Firing] = []
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
            firings.append(Firing(job, rule, mid, decision))
            results.append(decision)
        return results, firings

    def _decide_read(
        self,
        results: list[Decision],
        firings: list[Firing],
        shoppers: list[ShopperRead],
        now: float,
        dry: bool = False,
    ) -> tuple[list[Decision], list[Firing]]:
        """Decide `firings` on what was read of their `shoppers` (`_decide_all`)."""
        firings, shoppers = _drop_unknown(firings, shoppers)
        for f, shopper in zip(firings, shoppers, strict=True):
            f.before = shopper.message_state
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
            isolated(f, self._decide, f, shopper, candidates, facts, now, dry)
        return results, firings

    def _pools(
        self,
        firings: Sequence[Firing],
        shoppers: Sequence[ShopperRead],
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

        def request(f: Firing, shopper: ShopperRead) -> PoolRequest | None:
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

        asked = [isolated(f, request, f, s) for f, s in zip(firings, shoppers, strict=True)]
        wanted = [(f, r) for f, r in zip(firings, asked, strict=True) if r is not None]
        made: list[Pool | None]
        try:
            made = list(candidate_pools(index, [r for _, r in wanted], now=now, trending=trending))
        except Exception:  # one firing's bad input: find it, the others go on
            made = [
                isolated(f, candidate_pool, index, r.shopper, k=r.k, now=now,
                          trigger_items=r.trigger_items, allow_cart=r.allow_cart,
                          trending=trending)
                for f, r in wanted
            ]  # fmt: skip
        pools = {id(f): p for (f, _), p in zip(wanted, made, strict=True)}
        return [pools.get(id(f)) for f in firings]

    def _choose(
        self, firings: Sequence[Firing], pools: Sequence[Pool | None], index: LoadedIndex | None
    ) -> tuple[list[list[Candidate]], dict[str, Mapping[str, str]]]:
        """Each pool's items, and the catalog entries read for them. Most candidates pass
        the filters, so the catalog is read for the head of every pool first (one round
        trip for the entries not cached, none when all are: `FiringReader.queue` read the
        change feed), and again, for a head twice as long, only for pools whose head could
        not fill the message."""
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
        f: Firing,
        shopper: ShopperRead,
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
        f: Firing,
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


def _lost_its_own_items(rule: Rule, pool: Pool | None, chosen: Sequence[Candidate]) -> bool:
    """A message about its own items (a price drop, a restock, the cart) that none of them
    can lead: it would be sent without what it is about."""
    own = pool.trigger_items if pool is not None else ()
    leads = KINDS[rule.kind].leads_with_own_items
    return leads and bool(own) and not any(c.source == "trigger" for c in chosen)


def _drop_unknown(
    firings: list[Firing], shoppers: list[ShopperRead]
) -> tuple[list[Firing], list[ShopperRead]]:
    """Leave out, writing nothing, the firings of shoppers pushrec knows nothing of (no
    profile, no device): a job parked before its shopper was erased (or expired) must not
    bring their keys back. Such a shopper could not be reached anyway (no device)."""
    kept = [(f, s) for f, s in zip(firings, shoppers, strict=True) if s.known]
    for f, s in zip(firings, shoppers, strict=True):
        if not s.known:
            f.decision["action"] = "dropped"
            f.decision["reason"] = "no such shopper (erased or expired)"
    return [f for f, _ in kept], [s for _, s in kept]
