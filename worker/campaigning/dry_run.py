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
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import redis

from worker.campaigning.runs import PLAN_CHUNK, Runs, outcome_of
from worker.campaigning.timing import due_at, zone_of
from worker.campaigns import Campaign
from worker.contract import INTERNAL_BATCH
from worker.firing.firer import DryFiring, Firer
from worker.segmenting.query import SegmentQuery
from worker.shoppers.catalog import Catalog
from worker.store.keys import Keys

_KEPT_S = 3600


def is_send(outcome: str) -> bool:
    """A message made and sent on (the holdout's is made and stopped before the gateway)."""
    return outcome.startswith("queued.") and outcome != "queued.holdout"


def dry_run(
    client: redis.Redis,
    keys: Keys,
    runs: Runs,
    segments: SegmentQuery,
    firer: Firer,
    catalog: Catalog,
    campaign: Campaign,
    anchor: float,
    now: float,
    *,
    immediate: bool = False,
    samples: int = 5,
) -> dict[str, Any]:
    """What a run of `campaign` anchored at `anchor` would do on the state as it is."""
    tag = f"dry-{uuid.uuid4().hex[:12]}"
    sizes = segments.store(campaign.segment, now, lambda s: s.run_audience(tag), _KEPT_S)
    outcomes: Counter[str] = Counter()
    reasons: dict[str, Counter[str]] = defaultdict(Counter)
    per_hour: Counter[str] = Counter()
    per_zone: dict[str, Counter[int]] = defaultdict(Counter)
    sent: list[DryFiring] = []
    ended = 0
    try:
        for shard in range(keys.shards):
            key = keys.segment(shard).run_audience(tag)
            for offset in range(0, sizes[shard], PLAN_CHUNK):
                users: list[str] = client.zrange(key, offset, offset + PLAN_CHUNK - 1)  # type: ignore[assignment]
                prefs = runs.preferences(users)
                zones = {u: zone_of(p) for u, p in prefs.items()}
                by_time: dict[float, list[str]] = defaultdict(list)
                for user in users:
                    due = due_at(campaign, anchor, prefs[user], immediate)
                    if campaign.ended(due):
                        ended += 1
                    else:
                        by_time[_firing_time(due, now)].append(user)
                for at, group in sorted(by_time.items()):
                    for start in range(0, len(group), INTERNAL_BATCH):
                        chunk = group[start : start + INTERNAL_BATCH]
                        jobs = [Runs.job(campaign, tag, anchor, u) for u in chunk]
                        for user, firing in zip(chunk, firer.dry_fire(jobs, at), strict=True):
                            outcome = outcome_of(firing.decision)
                            outcomes[outcome] += 1
                            reasons[outcome][str(firing.decision.get("reason") or "")] += 1
                            if not is_send(outcome):
                                continue
                            sent.append(firing)
                            when = datetime.fromtimestamp(at, UTC)
                            per_hour[when.strftime("%Y-%m-%d %H:00Z")] += 1
                            per_zone[zones[user]][when.astimezone(ZoneInfo(zones[user])).hour] += 1
    finally:
        client.delete(*(keys.segment(n).run_audience(tag) for n in range(keys.shards)))
    coupons, face_value = _coupons(catalog, campaign, sent)
    return {
        "campaign": campaign.name,
        "segment": campaign.segment,
        "anchor": anchor,
        "audience": sum(sizes),
        "outcomes": dict(sorted(outcomes.items())),
        "outcome_reasons": {o: c.most_common(1)[0][0] for o, c in sorted(reasons.items())},
        "sends": sum(n for o, n in outcomes.items() if is_send(o)),
        "held_out": outcomes.get("queued.holdout", 0),
        "after_end_date": ended,
        "sends_per_hour_utc": dict(sorted(per_hour.items())),
        "sends_per_local_hour": {z: dict(sorted(c.items())) for z, c in sorted(per_zone.items())},
        "coupons": coupons,
        "coupon_face_value": round(face_value, 2),
        "samples": [_sample(f) for f in sent[:samples]],
    }


def _firing_time(due: float, now: float) -> float:
    """When the dry run fires a shopper due at `due`: now if due already, else at the
    start of the next minute from `due` (never before it), so shoppers whose local time,
    window or quiet hours put them within a minute share one batched firing (the real run
    fires them at the scheduler tick after `due`, up to a pace's wait later)."""
    return now if due <= now else math.ceil(due / 60) * 60


def _coupons(catalog: Catalog, campaign: Campaign, sent: list[DryFiring]) -> tuple[int, float]:
    """Coupons the sends carry, and their face value: the percent off the items'
    catalogue prices, as if each shopper bought every item offered."""
    if campaign.coupon is None:
        return 0, 0.0
    items = sorted({i for f in sent if f.record for i in f.record.items})
    prices = {i: float(v.get("price") or 0) for i, v in catalog.get_many(items).items()}
    value = sum(prices.get(i, 0.0) for f in sent if f.record for i in f.record.items)
    return len(sent), value * campaign.coupon.percent_off / 100


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
