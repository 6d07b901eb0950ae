"""The scheduler's campaign duties, run by the leader every second: start the runs their
cron calls for (the missed-run policy of `timing.py`), and pace out the runs sending."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from worker.campaigning.runs import Runs
from worker.campaigning.timing import catch_up
from worker.campaigns import Campaign
from worker.contract import Enqueue
from worker.store.client import StateRedis
from worker.store.keys import Keys

log = logging.getLogger(__name__)


def start_due_runs(
    client: StateRedis, keys: Keys, runs: Runs, campaigns: Sequence[Campaign], now: float
) -> list[str]:
    """Start the runs due by `now`; returns the campaigns started. A campaign seen for
    the first time looks back `grace_s` (a scheduler started just after an occurrence
    still runs it)."""
    started = []
    for campaign in campaigns:
        if not campaign.enabled or campaign.schedule is None:
            continue
        ck = keys.campaign(campaign.name)
        raw: str | None = client.get(ck.last_occurrence)  # type: ignore[assignment]
        last = float(raw) if raw else now - campaign.grace_s - 1
        plan = catch_up(campaign, last, now)
        for skipped in plan.skipped:
            last_missed = plan.run_at is None and skipped == plan.skipped[-1]
            reason = (
                f"missed by {now - skipped:.0f} s, over the grace of {campaign.grace_s} s"
                if last_missed
                else "missed, superseded by a later occurrence"
            )
            runs.record(campaign.name, {"id": f"skipped@{skipped:.0f}", "state": "skipped",
                                        "anchor": skipped, "reason": reason})  # fmt: skip
            log.warning("campaign %s: occurrence %.0f skipped: %s", campaign.name, skipped, reason)
        newest = plan.run_at if plan.run_at is not None else (plan.skipped or [last])[-1]
        if plan.run_at is not None:
            if runs.active(campaign.name):
                busy = "the previous run is still going"
                skip = {"id": f"skipped@{plan.run_at:.0f}", "state": "skipped",
                        "anchor": plan.run_at, "reason": busy}  # fmt: skip
                runs.record(campaign.name, skip)
            else:
                runs.start(campaign, plan.run_at, now)
                started.append(campaign.name)
        if newest > last:
            client.set(ck.last_occurrence, repr(newest))
    return started


def tick(
    client: StateRedis,
    keys: Keys,
    runs: Runs,
    campaigns: Sequence[Campaign],
    now: float,
    enqueue: Enqueue,
) -> int:
    """One scheduler tick: start due runs, finish planning, dispatch; returns shoppers sent."""
    start_due_runs(client, keys, runs, campaigns, now)
    sent = 0
    for campaign in campaigns:
        run: dict[str, str] = client.hgetall(keys.campaign(campaign.name).run)  # type: ignore[assignment]
        if run.get("state") == "planning":  # a planner that crashed: carry on
            runs.start(campaign, float(run["anchor"]), now, immediate=run.get("immediate") == "1")
        sent += runs.dispatch(campaign, now, enqueue)
    return sent
