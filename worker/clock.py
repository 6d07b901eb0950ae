"""The time pushrec decides by: the wall clock, or a simulated one for replays.

Every decision takes `now` as a parameter; a process gets it from `Settings.now()`. A
replay (`pushrec demo`, `pushrec replay`) sets `PUSHREC_SIMULATED_CLOCK` for every process
it starts, so workers and the scheduler share one clock that runs `speed` times faster
than the wall clock from `origin`: a rule delayed by a day waits a simulated day, quiet
hours follow the simulated time of day, and caps count simulated days. What talks to the
outside world keeps the wall clock: gateway tokens, rate limits, circuit breakers, the
sweep of stuck messages, Redis expiries.

`pushrec replay --as-fast-as-possible` moves the clock as the workers catch up instead:
it names a file (`PUSHREC_SIMULATED_CLOCK_FILE`) holding the clock, replaced whole at
each step, which every process re-reads when it changes (`ClockFile`).
"""

from __future__ import annotations

import os
import time
from functools import cache
from pathlib import Path

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


class ClockFile:
    """A `SimulatedClock` kept in a file that its writer replaces as time moves on
    (monotonically); `now()` costs a `stat` and re-reads the file only when it changed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._clock: SimulatedClock | None = None

    def now(self) -> float:
        st = os.stat(self.path)
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen != self._seen or self._clock is None:
            self._clock = SimulatedClock.model_validate_json(self.path.read_bytes())
            self._seen = seen
        return self._clock.now()

    def write(self, clock: SimulatedClock) -> None:
        """Replace the clock (atomically: a reader sees the old one or the new one)."""
        part = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        part.write_text(clock.model_dump_json())
        os.replace(part, self.path)


@cache
def followed(path: Path) -> ClockFile:
    """The one `ClockFile` of `path` in this process."""
    return ClockFile(path)
