"""The time pushrec decides by: the wall clock, or a simulated one for replays.

Every decision takes `now` as a parameter; a process gets it from `Settings.now()`. A
replay (`pushrec demo`, `pushrec replay`) sets `PUSHREC_SIMULATED_CLOCK` for every process
it starts, so workers and the scheduler share one clock that runs `speed` times faster
than the wall clock from `origin`: a rule delayed by a day waits a simulated day, quiet
hours follow the simulated time of day, and caps count simulated days. What talks to the
outside world keeps the wall clock: gateway tokens, rate limits, circuit breakers, the
sweep of stuck messages, Redis expiries.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field


class SimulatedClock(BaseModel):
    """Simulated epoch seconds `origin` at wall-clock epoch seconds `real_origin`, then
    `speed` simulated seconds per wall-clock second."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    origin: float
    real_origin: float
    speed: float = Field(gt=0, le=10_000_000)

    def now(self, real: float | None = None) -> float:
        """The simulated time at wall-clock time `real` (default: now)."""
        wall = time.time() if real is None else real
        return self.origin + (wall - self.real_origin) * self.speed

    def real_at(self, simulated: float) -> float:
        """The wall-clock time at which the simulated clock shows `simulated`."""
        return self.real_origin + (simulated - self.origin) / self.speed
