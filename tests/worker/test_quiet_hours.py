"""Quiet hours in the shopper's timezone, across midnight and DST changes."""

from __future__ import annotations

from datetime import UTC, datetime

from worker.policy.quiet_hours import next_allowed


def at(text: str) -> float:
    return datetime.fromisoformat(text).astimezone(UTC).timestamp()


def test_outside_the_window_is_allowed_now() -> None:
    assert next_allowed(at("2026-06-10T12:00:00+02:00"), "Europe/Berlin", "22:00-08:00") is None
    assert next_allowed(at("2026-06-10T08:00:00+02:00"), "Europe/Berlin", "22:00-08:00") is None


def test_late_evening_waits_for_next_morning_local_time() -> None:
    until = next_allowed(at("2026-06-10T23:30:00+02:00"), "Europe/Berlin", "22:00-08:00")
    assert until == at("2026-06-11T08:00:00+02:00")


def test_early_morning_waits_for_the_same_morning() -> None:
    until = next_allowed(at("2026-06-10T03:00:00-07:00"), "America/Los_Angeles", "22:00-08:00")
    assert until == at("2026-06-10T08:00:00-07:00")


def test_window_that_does_not_wrap_midnight() -> None:
    until = next_allowed(at("2026-06-10T14:30:00+09:00"), "Asia/Tokyo", "13:00-15:00")
    assert until == at("2026-06-10T15:00:00+09:00")


def test_end_inside_a_spring_forward_gap_is_the_first_instant_after_it() -> None:
    # Europe/Berlin 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 never happens.
    until = next_allowed(at("2026-03-29T01:00:00+01:00"), "Europe/Berlin", "22:00-02:30")
    assert until == at("2026-03-29T03:00:00+02:00")
    assert until > at("2026-03-29T01:00:00+01:00")


def test_fall_back_night_ends_at_the_real_local_morning() -> None:
    # 2026-10-25 in Berlin: 03:00 CEST falls back to 02:00 CET; 08:00 is CET.
    until = next_allowed(at("2026-10-25T01:30:00+02:00"), "Europe/Berlin", "22:00-08:00")
    assert until == at("2026-10-25T08:00:00+01:00")
