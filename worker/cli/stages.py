"""A progress display for a job of named stages (`pushrec index rebuild`).

Each stage gets one line with its running count (when it has one) and its time. On a
terminal the current stage's line is redrawn in place as its count grows; elsewhere (a
log file, CI) each line is printed once, when its stage ends.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO


class StageDisplay:
    """Call it with (stage, count or None) as the job goes; `close()` ends the last line."""

    def __init__(
        self,
        stages: Sequence[str],
        out: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stages = list(stages)
        self._out = out or sys.stderr
        self._live = self._out.isatty()
        self._clock = clock
        self._stage: str | None = None
        self._count: int | None = None
        self._started = 0.0

    def __call__(self, stage: str, count: int | None) -> None:
        if stage != self._stage:
            self.close()
            self._stage, self._count, self._started = stage, None, self._clock()
        if count is not None:
            self._count = count
        if self._live:
            self._out.write("\r" + self._line())
            self._out.flush()

    def close(self) -> None:
        """End the current stage's line (with its time)."""
        if self._stage is None:
            return
        self._out.write(("\r" if self._live else "") + self._line() + "\n")
        self._out.flush()
        self._stage = None

    def _line(self) -> str:
        assert self._stage is not None
        number = self._stages.index(self._stage) + 1 if self._stage in self._stages else 0
        count = f": {self._count:,} rows" if self._count is not None else ""
        seconds = self._clock() - self._started
        return f"[{number}/{len(self._stages)}] {self._stage}{count} ({seconds:.1f} s)".ljust(60)
