"""When a campaign runs and when a run reaches each shopper.

A campaign's cron is read in UTC, or, with `local_time`, as a wall time in every
shopper's own timezone. A local-time run starts when the first timezone on Earth
(UTC+14) reaches the cron time (the run's anchor) and reaches each shopper when their
own clock shows that same wall time; shoppers without a timezone count as UTC.

A shopper's time then moves, never earlier, to the start of the campaign's send window
and to the end of their quiet hours (marketing), both in their timezone (the firing
still runs the contact policy, which would otherwise defer it).

Missed runs (the scheduler was down when the cron fired): the latest occurrence missed
runs late if it is at most `grace_s` old, else it is skipped; earlier missed
occurrences are skipped. Every skip is recorded in the campaign's history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

from worker.campaigns import Campaign
from worker.policy.quiet_hours import next_allowed

EARLIEST_ZONE = "Etc/GMT-14"  # UTC+14 (the POSIX sign is inverted)
_MAX_OCCURRENCES = 1000


def cron_zone(campaign: Campaign) -> str:
    return EARLIEST_ZONE if campaign.local_time else "UTC"


def occurrences(campaign: Campaign, after: float, until: float) -> list[float]:
    """The campaign's cron times in (`after`, `until`] (epoch s), oldest first."""
    if campaign.schedule is None:
        return []
    trigger = CronTrigger.from_crontab(campaign.schedule, timezone=cron_zone(campaign))
    found: list[float] = []
    previous: datetime | None = None
    moment = datetime.fromtimestamp(after + 1, UTC)
    while len(found) < _MAX_OCCURRENCES:
        fire = trigger.get_next_fire_time(previous, moment)
        if fire is None or fire.timestamp() > until:
            break
        found.append(fire.timestamp())
        previous, moment = fire, datetime.fromtimestamp(fire.timestamp() + 1, UTC)
    return found


def next_occurrence(campaign: Campaign, after: float) -> float | None:
    found = occurrences(campaign, after, after + 400 * 86_400)
    return found[0] if found else None


@dataclass(frozen=True)
class Catchup:
    """What the scheduler does about the occurrences since it last looked."""

    run_at: float | None  # the occurrence to run now (late, within grace), if any
    skipped: list[float]  # occurrences skipped, oldest first


def catch_up(campaign: Campaign, last_seen: float, now: float) -> Catchup:
    """The missed-run policy (module docstring) over the occurrences in (last_seen, now]."""
    due = [t for t in occurrences(campaign, last_seen, now) if not campaign.ended(t)]
    if not due:
        return Catchup(None, [])
    latest = due[-1]
    if now - latest <= campaign.grace_s:
        return Catchup(latest, due[:-1])
    return Catchup(None, due)


def zone_of(prefs: dict[str, str]) -> str:
    name = prefs.get("timezone") or "UTC"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return "UTC"
    return name


def due_at(campaign: Campaign, anchor: float, prefs: dict[str, str], immediate: bool) -> float:
    """When a run anchored at `anchor` reaches the shopper with preferences `prefs`
    (`immediate`: `campaign run --now`, at the anchor, whatever the schedule)."""
    if immediate:
        return anchor
    zone = zone_of(prefs)
    due = anchor
    if campaign.local_time:
        wall = datetime.fromtimestamp(anchor, UTC).astimezone(ZoneInfo(EARLIEST_ZONE))
        due = wall.replace(tzinfo=ZoneInfo(zone)).timestamp()
    if campaign.send_window:
        start, end = campaign.send_window.split("-")
        due = next_allowed(due, zone, f"{end}-{start}") or due  # outside: the window opens
    if campaign.purpose == "marketing" and prefs.get("quiet_hours"):
        due = next_allowed(due, zone, prefs["quiet_hours"]) or due
    return due  # never before the anchor: every zone reaches a wall time after UTC+14
