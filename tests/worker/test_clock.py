"""The simulated clock of replays: read from the environment, shared by every process."""

from __future__ import annotations

import json

import pytest

from worker.clock import SimulatedClock
from worker.settings import Settings, SettingsError


def test_simulated_clock_runs_speed_times_faster() -> None:
    clock = SimulatedClock(origin=1_000_000.0, real_origin=500.0, speed=3600)
    assert clock.now(real=500.0) == 1_000_000.0
    assert clock.now(real=501.5) == 1_000_000.0 + 1.5 * 3600
    assert clock.real_at(clock.now(real=612.25)) == pytest.approx(612.25)


def test_settings_read_the_clock_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "PUSHREC_SIMULATED_CLOCK",
        json.dumps({"origin": 2_000_000_000.0, "real_origin": 0.0, "speed": 2.0}),
    )
    settings = Settings.load()
    assert settings.simulated_clock == SimulatedClock(
        origin=2_000_000_000.0, real_origin=0.0, speed=2.0
    )
    # the wall clock's time since 1970, twice over, after the origin
    assert settings.now() > 2_000_000_000.0 + 2 * 1.7e9


def test_settings_refuse_a_clock_that_stands_still(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "PUSHREC_SIMULATED_CLOCK", json.dumps({"origin": 0, "real_origin": 0, "speed": 0})
    )
    with pytest.raises(SettingsError, match="simulated_clock"):
        Settings.load()


def test_without_a_simulated_clock_settings_tell_the_wall_clock_time() -> None:
    import time

    before = time.time()
    assert before <= Settings.load().now() <= time.time()
