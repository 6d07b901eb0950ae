"""A campaign's dry run: the run's own code with the send step replaced by a count.

The audience is computed as a run computes it (`SegmentQuery.store`), each shopper's
time as a run plans it (`timing.due_at`), and each shopper is fired with `Firer.dry_fire`
at that time (the minute after it: `_firing_time`): the same reads, recommendation,
contact policy and composition, nothing written, a chunk of shoppers a round trip per
stage. The figures: audience, outcome per policy step, sends per
hour (UTC and in each shopper's timezone), coupons and their face value, a few sample
messages with their items and reasons.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from worker.campaigning.runs import PLAN_CHUNK, Runs, outcome_of
from worker.campaigning.timing import due_at, zone_of
from worker.campaigns import Campaign
from worker.contract import INTERNAL_BATCH
from worker.firing.firer import DryFiring, Firer
from worker.segmenting.query import SegmentQuery
from worker.store.client import StateRedis
from worker.store.keys import Keys

_KEPT_S = 3600
# From this audience on, a pool of processes is worth its start-up (seconds per process).
POOLED_FROM = 5000


def is_send(outcome: str) -> bool:
    """A message made and sent on (the holdout's is made and stopped before the gateway)."""
    return outcome.startswith("queued.") and outcome != "queued.holdout"


@dataclass
class DryTally:
    """What firing some chunks of the audience would do; tallies of chunks add up."""

    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    per_hour: Counter[str] = field(default_factory=Counter)
    per_zone: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    coupons: int = 0
    face_value: float = 0.0  # of the coupons, as firing prices them
    samples: list[dict[str, Any]] = field(default_factory=list)
    ended: int = 0

    def add(self, other: DryTally, samples: int) -> None:
        self.outcomes.update(other.outcomes)
        for outcome, reasons in other.reasons.items():
            self.reasons[outcome].update(reasons)
        self.per_hour.update(other.per_hour)
        for zone, hours in other.per_zone.items():
            self.per_zone[zone].update(hours)
        self.coupons += other.coupons
        self.face_value += other.face_value
        self.samples += other.samples[: max(0, samples - len(self.samples))]
        self.ended += other.ended


@dataclass(frozen=True)
class DryChunk:
    """A chunk of a dry run's stored audience: `size` shoppers from `offset` of shard
    `shard`, with what firing them needs (picklable: pool workers take it)."""

    campaign: Campaign
    tag: str
    shard: int
    offset: int
    size: int
    anchor: float
    now: float
    immediate: bool
    samples: int


# Fires the chunks, in any order, and yields their tallies: `fire_chunks` in this
# process, or a pool of processes (`worker/service/dry_run_pool.py`).
ChunkFirer = Callable[[list[DryChunk]], Iterable[DryTally]]


def dry_run(
    client: StateRedis,
    keys: Keys,
    runs: Runs,
    segments: SegmentQuery,
    firer: Firer,
    campaign: Campaign,
    anchor: float,
    now: float,
    *,
    immediate: bool = False,
    samples: int = 5,
    fire: ChunkFirer | None = None,
) -> dict[str, Any]:
    """What a run of `campaign` anchored at `anchor` would do on the state as it is;
    `fire` fires the audience's chunks when it holds `POOLED_FROM` shoppers or more (else,
    and by default, they are fired one after the other, here)."""
    tag = f"dry-{uuid.uuid4().hex[:12]}"
    sizes = segments.store(campaign.segment, now, lambda s: s.run_audience(tag), _KEPT_S)
    chunks = [
        DryChunk(campaign, tag, shard, offset, PLAN_CHUNK, anchor, now, immediate, samples)
        for shard in range(keys.shards)
        for offset in range(0, sizes[shard], PLAN_CHUNK)
    ]
    total = DryTally()
    try:
        if fire is None or sum(sizes) < POOLED_FROM:
            fire = lambda cs: (fire_chunk(client, keys, runs, firer, c) for c in cs)  # noqa: E731
        for tally in fire(chunks):
            total.add(tally, samples)
    finally:
        client.delete(*(keys.segment(n).run_audience(tag) for n in range(keys.shards)))
    outcomes = total.outcomes
    return {
        "campaign": campaign.name,
        "segment": campaign.segment,
        "anchor": anchor,
        "audience": sum(sizes),
        "outcomes": dict(sorted(outcomes.items())),
        "outcome_reasons": {o: c.most_common(1)[0][0] for o, c in sorted(total.reasons.items())},
        "sends": sum(n for o, n in outcomes.items() if is_send(o)),
        "held_out": outcomes.get("queued.holdout", 0),
        "after_end_date": total.ended,
        "sends_per_hour_utc": dict(sorted(total.per_hour.items())),
        "sends_per_local_hour": {
            z: dict(sorted(c.items())) for z, c in sorted(total.per_zone.items())
        },
        "coupons": total.coupons,
        "coupon_face_value": round(total.face_value, 2),
        "samples": sorted(total.samples, key=lambda x: str(x["user_id"]))[:samples],
    }


def fire_chunk(
    client: StateRedis, keys: Keys, runs: Runs, firer: Firer, chunk: DryChunk
) -> DryTally:
    """Plan and dry-fire one chunk: shoppers due within the same minute are fired
    together, `INTERNAL_BATCH` a call (a round trip per stage each)."""
    campaign, tally = chunk.campaign, DryTally()
    key = keys.segment(chunk.shard).run_audience(chunk.tag)
    users: list[str] = client.zrange(key, chunk.offset, chunk.offset + chunk.size - 1)  # type: ignore[assignment]
    prefs = runs.preferences(users)
    by_time: dict[float, list[str]] = defaultdict(list)
    for user in users:
        due = due_at(campaign, chunk.anchor, prefs[user], chunk.immediate)
        if campaign.ended(due):
            tally.ended += 1
        else:
            by_time[_firing_time(due, chunk.now)].append(user)
    for at, group in sorted(by_time.items()):
        when = datetime.fromtimestamp(at, UTC)
        for start in range(0, len(group), INTERNAL_BATCH):
            batch = group[start : start + INTERNAL_BATCH]
            jobs = [Runs.job(campaign, chunk.tag, chunk.anchor, u) for u in batch]
            for user, firing in zip(batch, firer.dry_fire(jobs, at), strict=True):
                outcome = outcome_of(firing.decision)
                tally.outcomes[outcome] += 1
                tally.reasons[outcome][str(firing.decision.get("reason") or "")] += 1
                if not is_send(outcome) or firing.record is None:
                    continue
                zone = zone_of(prefs[user])
                tally.per_hour[when.strftime("%Y-%m-%d %H:00Z")] += 1
                tally.per_zone[zone][when.astimezone(ZoneInfo(zone)).hour] += 1
                coupon = firing.decision.get("coupon", {})
                if "face_value" in coupon:  # priced, not issued: the budget is not checked
                    tally.coupons += 1
                    tally.face_value += float(coupon["face_value"])
                if len(tally.samples) < chunk.samples:
                    tally.samples.append(_sample(firing))
    return tally


def _firing_time(due: float, now: float) -> float:
    """When the dry run fires a shopper due at `due`: now if due already, else at the
    start of the next minute from `due` (never before it), so shoppers whose local time,
    window or quiet hours put them within a minute share one batched firing (the real run
    fires them at the scheduler tick after `due`, up to a pace's wait later)."""
    return now if due <= now else math.ceil(due / 60) * 60


def _sample(firing: DryFiring) -> dict[str, Any]:
    record = firing.record
    assert record is not None
    reasons = {c["item_id"]: c["reason"] for c in firing.decision.get("candidates", [])}
    return {
        "user_id": record.user_id,
        "title": record.title,
        "body": record.body,
        "channels": record.channels,
        "items": [{"item_id": i, "reason": reasons.get(i, "")} for i in record.items],
    }
