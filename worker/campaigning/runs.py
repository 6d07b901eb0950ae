"""A campaign run: its audience frozen at the start, paced out in chunks, each shopper
counted once.

A run goes `planning` -> `sending` -> `done` (or `ended` at the campaign's end date),
and may be `paused` while sending. Everything it keeps is in Redis, so whichever process
picks it up carries on where the last one stopped:

1. Planning (`start`): the segment is stored per shard as the run's audience (one query
   per shard, `segmenting/query.py`); a cursor (shard, offset) then walks it in chunks,
   reading each shopper's timezone and quiet hours and writing when the run reaches them
   (`timing.due_at`) to the shard's `due` set. A crash repeats at most one chunk (ZADD).
2. Sending (`dispatch`, every second by the scheduler leader): the shoppers due, at most
   `rate_per_s` a second, go out as `pushrec.campaign_fire` tasks of up to 100 on the push
   queue, and only then leave the `due` set: the `due` set is the cursor. A crash between
   the two sends a chunk again, which does nothing twice: the message id derives from
   (campaign, run, shopper) and the outbox creates a message once.
3. Firing (`fire_chunk`, in the task): the campaign's rule through the same firing as
   real-time rules (recommendation, contact policy, outbox, audit), then each shopper's
   outcome (`action.step`) is counted once per run (`run_tally.lua`).
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from worker.campaigning.timing import due_at
from worker.campaigns import Campaign
from worker.contract import CAMPAIGN_FIRE, INTERNAL_BATCH, Enqueue
from worker.firing.firer import Firer
from worker.policy.jobs import FireJob
from worker.segmenting.query import SegmentQuery
from worker.shoppers.audit import Decision
from worker.shoppers.snapshot import decode_preferences
from worker.store.client import StateRedis
from worker.store.keys import CampaignKeys, Keys, SegmentKeys
from worker.store.scripts import Scripts

log = logging.getLogger(__name__)

RUN_KEPT_S = 30 * 86_400  # a run's audience and outcomes, after it starts
HISTORY_KEPT = 50
PLAN_CHUNK = 1000
UNPACED_PER_TICK = 10_000  # a campaign without rate_per_s: per dispatch call
ACTIVE = ("planning", "sending", "paused")


def run_id(anchor: float, immediate: bool) -> str:
    stamp = datetime.fromtimestamp(anchor, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}{'-now' if immediate else ''}"


def trigger_id(run: str) -> str:
    """The trigger id of a run's firings: message id = (campaign, run, shopper)."""
    return f"run:{run}"


def outcome_of(decision: Decision) -> str:
    """`action.step` of a decision (`queued.all_passed` is a send)."""
    action = decision.get("action", "error")
    if action == "dropped":
        return "dropped.shopper"
    return f"{action}.{decision.get('step') or 'policy'}"


@dataclass(frozen=True)
class RunStatus:
    campaign: str
    run: dict[str, str]  # the run hash; {} when there is none
    outcomes: dict[str, int]  # action.step -> shoppers, and `coupons`
    due_left: int
    history: list[dict[str, Any]]


class Runs:
    def __init__(
        self, client: StateRedis, keys: Keys, scripts: Scripts, segments: SegmentQuery
    ) -> None:
        self._client = client
        self._keys = keys
        self._scripts = scripts
        self._segments = segments

    def _shards(self) -> list[SegmentKeys]:
        return [self._keys.segment(n) for n in range(self._keys.shards)]

    # --- starting and planning ---------------------------------------------------------
    def start(
        self, campaign: Campaign, anchor: float, now: float, *, immediate: bool = False
    ) -> dict[str, str]:
        """Start (or, after a crash, finish planning) the run anchored at `anchor`.
        Returns the run hash; a run already in progress under another id is left alone
        and returned as it is."""
        ck = self._keys.campaign(campaign.name)
        current: dict[str, str] = self._client.hgetall(ck.run)  # type: ignore[assignment]
        run = run_id(anchor, immediate)
        if current.get("state") in ACTIVE and current.get("id") != run:
            return current
        if current.get("id") != run:
            if current:
                self.record(campaign.name, {**current, "ended_at": now})
            current = {"id": run, "state": "planning", "anchor": repr(anchor),
                       "immediate": "1" if immediate else "0", "started_at": repr(now),
                       "cursor_shard": "0", "cursor_offset": "0",
                       "paced_at": repr(now)}  # fmt: skip
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(ck.run)
            pipe.hset(ck.run, mapping=dict(current))  # type: ignore[arg-type]
            pipe.execute()
            sizes = self._segments.store(
                campaign.segment, now, lambda s: s.run_audience(run), RUN_KEPT_S
            )
            self._client.hset(ck.run, "audience", sum(sizes))
        if current.get("state") == "planning":
            self._plan(campaign, ck, run, anchor, immediate)
        return self._client.hgetall(ck.run)  # type: ignore[return-value]

    def _plan(
        self, campaign: Campaign, ck: CampaignKeys, run: str, anchor: float, immediate: bool
    ) -> None:
        """Walk the audience from the cursor, writing each shopper's due time."""
        raw: list[str | None] = self._client.hmget(ck.run, ["cursor_shard", "cursor_offset"])  # type: ignore[assignment]
        shard, offset = int(raw[0] or 0), int(raw[1] or 0)
        while shard < self._keys.shards:
            seg = self._keys.segment(shard)
            users: list[str] = self._client.zrange(
                seg.run_audience(run), offset, offset + PLAN_CHUNK - 1
            )  # type: ignore[assignment]
            due = self.due_times(campaign, users, anchor, immediate)
            pipe = self._client.pipeline(transaction=True)
            if due:
                pipe.zadd(seg.run_due(run), due)
                pipe.expire(seg.run_due(run), RUN_KEPT_S)
            if len(users) < PLAN_CHUNK:
                shard, offset = shard + 1, 0
            else:
                offset += PLAN_CHUNK
            pipe.hset(ck.run, mapping={"cursor_shard": shard, "cursor_offset": offset})
            pipe.hincrby(ck.run, "planned", len(due))
            pipe.execute()
        self._client.hset(ck.run, "state", "sending")

    def due_times(
        self, campaign: Campaign, users: Sequence[str], anchor: float, immediate: bool
    ) -> dict[str, float]:
        """When the run reaches each of `users` (one round trip for their preferences)."""
        prefs = self.preferences(users)
        return {u: due_at(campaign, anchor, prefs[u], immediate) for u in users}

    def preferences(self, users: Sequence[str]) -> dict[str, dict[str, str]]:
        """Each shopper's preferences (timezone, quiet hours), in one round trip."""
        if not users:
            return {}
        pipe = self._client.pipeline(transaction=False)
        for user in users:
            pipe.hgetall(self._keys.user(user).preferences)
        return {u: decode_preferences(p) for u, p in zip(users, pipe.execute(), strict=True)}

    # --- sending -----------------------------------------------------------------------
    def dispatch(self, campaign: Campaign, now: float, enqueue: Enqueue) -> int:
        """Send out the shoppers due by `now`, within the pace; returns how many."""
        ck = self._keys.campaign(campaign.name)
        current: dict[str, str] = self._client.hgetall(ck.run)  # type: ignore[assignment]
        if current.get("state") != "sending":
            return 0
        run = current["id"]
        if campaign.ended(now) or not campaign.enabled:
            self._finish(campaign.name, ck, "ended")
            return 0
        paced_at = float(current.get("paced_at") or now - 1)  # resumed: a second's worth
        budget = float(UNPACED_PER_TICK)
        if campaign.rate_per_s is not None:
            # the time since the last dispatch, however often the scheduler ticks; two
            # seconds at most, so a scheduler that was away does not catch up in a burst
            elapsed = min(max(now - paced_at, 0.0), 2.0)
            budget = campaign.rate_per_s * elapsed + float(current.get("carry", 0))
        allowance = int(budget)
        sent = 0
        left = 0
        for seg in self._shards():
            take = allowance - sent
            users: list[str] = (
                self._client.zrangebyscore(seg.run_due(run), "-inf", now, start=0, num=take)  # type: ignore[assignment]
                if take > 0
                else []
            )
            jobs = [self.job(campaign, run, float(current["anchor"]), u) for u in users]
            for start in range(0, len(jobs), INTERNAL_BATCH):
                chunk = jobs[start : start + INTERNAL_BATCH]
                enqueue(CAMPAIGN_FIRE, {"campaign": campaign.name, "run": run,
                                        "jobs": [j.kwargs() for j in chunk]})  # fmt: skip
            pipe = self._client.pipeline(transaction=False)
            if users:
                pipe.zrem(seg.run_due(run), *users)
            pipe.zcard(seg.run_due(run))
            left += int(pipe.execute()[-1])
            sent += len(users)
        pipe = self._client.pipeline(transaction=False)
        pipe.hincrby(ck.run, "dispatched", sent)
        carry = budget - sent if sent == allowance and campaign.rate_per_s else 0.0
        pipe.hset(ck.run, mapping={"paced_at": repr(now), "carry": repr(carry)})
        pipe.execute()
        if left == 0:
            self._finish(campaign.name, ck, "done")
        return sent

    @staticmethod
    def job(campaign: Campaign, run: str, anchor: float, user_id: str) -> FireJob:
        return FireJob(
            rule=campaign.name,
            user_id=user_id,
            trigger_id=trigger_id(run),
            trigger_ts=anchor,
            items=(),
            extra={"campaign": campaign.name},
        )

    def fire_chunk(
        self, firer: Firer, run: str, jobs: Sequence[FireJob], now: float, owner: str,
        has_coupon: bool,
    ) -> dict[str, int]:  # fmt: skip
        """Fire a chunk and count each shopper's outcome once for the run."""
        decisions = firer.fire_many(jobs, now, owner)
        return self.tally(run, [j.user_id for j in jobs], decisions, has_coupon)

    def tally(
        self, run: str, users: Sequence[str], decisions: Sequence[Decision], has_coupon: bool
    ) -> dict[str, int]:
        by_shard: dict[int, list[str | int]] = defaultdict(list)
        counts: Counter[str] = Counter()
        for user, decision in zip(users, decisions, strict=True):
            outcome = outcome_of(decision)
            if outcome.startswith("duplicate."):  # fired before a crash: that one counts
                outcome = "queued.earlier"
            coupon = has_coupon and outcome.startswith("queued.") and outcome != "queued.holdout"
            by_shard[self._keys.shard(user)] += [user, outcome, "1" if coupon else "0"]
            counts[outcome] += 1
        pipe = self._client.pipeline(transaction=False)
        for shard, args in sorted(by_shard.items()):
            seg = self._keys.segment(shard)
            Scripts.queue(pipe, self._scripts.run_tally, [seg.run_done(run), seg.run_counts(run)],
                          [RUN_KEPT_S, *args])  # fmt: skip
        pipe.execute()
        return dict(counts)

    # --- control and status ------------------------------------------------------------
    def set_paused(self, name: str, paused: bool) -> str:
        """Pause or resume the current run; returns its state after."""
        ck = self._keys.campaign(name)
        state: str | None = self._client.hget(ck.run, "state")  # type: ignore[assignment]
        if paused and state == "sending":
            self._client.hset(ck.run, "state", "paused")
            return "paused"
        if not paused and state == "paused":
            self._client.hset(ck.run, mapping={"state": "sending", "paced_at": "", "carry": "0"})
            return "sending"
        return state or "none"

    def active(self, name: str) -> bool:
        return self._client.hget(self._keys.campaign(name).run, "state") in ACTIVE

    def status(self, name: str) -> RunStatus:
        ck = self._keys.campaign(name)
        run: dict[str, str] = self._client.hgetall(ck.run)  # type: ignore[assignment]
        outcomes: Counter[str] = Counter()
        left = 0
        if run.get("id"):
            pipe = self._client.pipeline(transaction=False)
            for seg in self._shards():
                pipe.hgetall(seg.run_counts(run["id"]))
                pipe.zcard(seg.run_due(run["id"]))
            replies = pipe.execute()
            for counts in replies[::2]:
                outcomes.update({k: int(v) for k, v in counts.items()})
            left = sum(int(n) for n in replies[1::2])
        history = [json.loads(h) for h in self._client.lrange(ck.history, 0, 9)]
        return RunStatus(name, run, dict(outcomes), left, history)

    def record(self, name: str, entry: Mapping[str, Any]) -> None:
        """Add a finished, ended or skipped run to the campaign's history."""
        ck = self._keys.campaign(name)
        pipe = self._client.pipeline(transaction=False)
        pipe.lpush(ck.history, json.dumps(dict(entry), default=str, sort_keys=True))
        pipe.ltrim(ck.history, 0, HISTORY_KEPT - 1)
        pipe.execute()

    def _finish(self, name: str, ck: CampaignKeys, state: str) -> None:
        self._client.hset(ck.run, "state", state)
        log.info("campaign %s: run %s", name, state)
