"""Thread CPU per function of the hot path, timed at every call (`hot_path.py --functions`).

A sampling profiler tells where time goes within a few percent for a stage, but not
for the small functions under it: py-spy in its default (blocking) mode over
bench/hot_path.py put 25 % of an FCM send in parsing a 60-byte JSON answer (1.4 us with
timeit) and 8 % of an event in redis-py's `os.getpid()` (0.1 us), samples piling up
where a thread comes back from a system call. This clock reads `time.thread_time_ns()`
(user and system CPU of the thread, so a socket's kernel work counts, waiting does not)
around each call of the (plain, not async) functions named, and keeps for each the
inclusive time, the exclusive time (less the named functions it called) and the calls.
Each timed call costs about 1 us, in the figures of the run (in its caller's exclusive
time). Calls are timed on one thread at a time, as `bench/hot_path.py` makes them.

A pipeline's `execute` is also kept per call site (the first caller outside
redis-py and `worker/store`) with its commands: a round trip's CPU, packing, system calls
and reply parsing included.
"""

from __future__ import annotations

import functools
import importlib
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["HOT_PATH", "FunctionClock"]

HOT_PATH = (
    "worker.service.ingest:track",
    "worker.shoppers.state:StateStore.apply_events",
    "worker.shoppers.state:StateStore.react_and_confirm",
    "worker.firing.firer:Firer.fire_many",
    "worker.firing.reads:FiringReader.read",
    "worker.firing.firer:Firer._pools",
    "worker.firing.firer:Firer._choose",
    "worker.firing.firer:Firer._decide",
    "worker.firing.writes:FiringWriter.write",
    "worker.delivery.sender:MessageSender.deliver_many",
    "worker.delivery.sender:MessageSender._recheck",
    "worker.delivery.sender:MessageSender._reserve_and_claim",
    "worker.delivery.push_runtime:PushRuntime.run",
    "worker.delivery.settle:Settler.settle",
    "worker.store.pinned:PinnedPipeline.execute",
)
"""The stages of docs/realtime.md's "What one event costs", and the state store's pipelines
(`bench/hot_path.py` runs a single node; `redis.client:Pipeline.execute` times a
cluster's, but names again each one the pinned pipeline hands to it)."""

_PIPELINES = ("PinnedPipeline.execute", "Pipeline.execute")
_STORE_FRAMES = ("/redis/", "/worker/store/", __file__)  # and the clock of a caller


class FunctionClock:
    """Install with `installed()`; only calls made inside `timing()` are counted."""

    def __init__(self, targets: Sequence[str] = HOT_PATH) -> None:
        self.targets = targets
        self.inclusive: Counter[str] = Counter()
        self.exclusive: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.commands: Counter[str] = Counter()  # a pipeline call site's
        self._children: list[int] = []  # per open timed call: its timed callees' time
        self._on = False

    @contextmanager
    def timing(self) -> Iterator[None]:
        self._on = True
        try:
            yield
        finally:
            self._on = False

    @contextmanager
    def installed(self) -> Iterator[None]:
        patched: list[tuple[Any, str, Any]] = []
        try:
            for target in self.targets:
                module, _, qualname = target.partition(":")
                *path, attr = qualname.split(".")
                owner: Any = importlib.import_module(module)
                for part in path:
                    owner = getattr(owner, part)
                original = owner.__dict__[attr]
                setattr(owner, attr, self._timed(qualname, original))
                patched.append((owner, attr, original))
            yield
        finally:
            for owner, attr, original in reversed(patched):
                setattr(owner, attr, original)

    def _timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        clock = time.thread_time_ns

        def site(pipeline: Any) -> str:
            """`name @caller:line`, counting the pipeline's commands there."""
            frame = sys._getframe(2)  # site <- timed <- the caller
            while frame.f_back and any(p in frame.f_code.co_filename for p in _STORE_FRAMES):
                frame = frame.f_back
            key = f"{name} @{frame.f_code.co_name}:{frame.f_lineno}"
            self.commands[key] += len(pipeline)
            return key

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self._on:
                return fn(*args, **kwargs)
            keys = (name, site(args[0])) if name in _PIPELINES else (name,)
            self._children.append(0)
            started = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = clock() - started
                own = spent - self._children.pop()
                for key in keys:
                    self.inclusive[key] += spent
                    self.exclusive[key] += own
                    self.calls[key] += 1
                if self._children:
                    self._children[-1] += spent

        return timed

    def clear(self) -> None:
        for counts in (self.inclusive, self.exclusive, self.calls, self.commands):
            counts.clear()

    def per(self, events: int) -> dict[str, dict[str, float]]:
        """Per event: microseconds inclusive and exclusive, calls, and a pipeline call
        site's commands, by function, most inclusive first."""
        return {
            name: {
                "inclusive_us": round(self.inclusive[name] / events / 1000, 1),
                "exclusive_us": round(self.exclusive[name] / events / 1000, 1),
                "calls": round(self.calls[name] / events, 3),
                "commands": round(self.commands[name] / events, 2),
            }
            for name in sorted(self.inclusive, key=lambda n: -self.inclusive[n])
        }
