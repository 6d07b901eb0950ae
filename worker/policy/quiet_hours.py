"""Quiet hours in the shopper's own timezone, DST included."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo


def parse_window(text: str) -> tuple[time, time]:
    """`"22:00-08:00"` -> (22:00, 08:00). The window may wrap midnight."""
    start, end = text.split("-")
    return time.fromisoformat(start), time.fromisoformat(end)


def _inside(local: time, start: time, end: time) -> bool:
    if start == end:
        return False
    if start < end:
        return start <= local < end
    return local >= start or local < end


def _localize(day: datetime, at: time, zone: ZoneInfo) -> datetime:
    """The first real instant at or after wall time `at` on `day`'s date in `zone`.

    A wall time inside a spring-forward gap does not exist; the end of quiet hours is
    then the first instant after the gap, so a message is never sent early.
    """
    naive = datetime.combine(day.date(), at)
    candidate = naive.replace(tzinfo=zone)
    roundtrip = candidate.astimezone(UTC).astimezone(zone)
    if roundtrip.replace(tzinfo=None) != naive:  # in a gap: move to the gap's end
        utc = candidate.astimezone(UTC)
        while utc.astimezone(zone).replace(tzinfo=None) > naive:
            utc -= timedelta(minutes=1)
        candidate = (utc + timedelta(minutes=1)).astimezone(zone)
    return candidate


def next_allowed(now: float, timezone: str, window: str) -> float | None:
    """None if `now` (epoch s) is outside the quiet window in `timezone`, else the epoch
    second at which it ends (the next time a marketing message may be sent)."""
    zone = ZoneInfo(timezone)
    start, end = parse_window(window)
    local = datetime.fromtimestamp(now, UTC).astimezone(zone)
    if not _inside(local.time().replace(tzinfo=None), start, end):
        return None
    end_day = (
        local if (start > end and local.time() < end) or start < end else local + timedelta(days=1)
    )
    ends = _localize(end_day, end, zone)
    if ends.timestamp() <= now:  # DST moved the wall clock past the end already
        return None
    return ends.timestamp()
