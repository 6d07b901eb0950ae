"""The task ledger of an as-fast-as-possible replay: every task published and every task
run, counted in Redis, so the step barrier knows the workers are done by counting, not
by how long they have looked idle.

Looking idle (queues empty, nothing unacked) is not enough: a worker that has popped a
task message from its queue holds it in neither place until kombu records it as unacked,
one round trip later, and on a busy machine that worker may not run for milliseconds. A
barrier that moved the clock then had the task decide at the next step's time: a next-day
job claimed in one step fired at the origin of the next, up to an hour of simulated time
late. Counted here instead: a publish before its message leaves the process
(`before_task_publish`), a task once it has run, whatever its outcome (`task_postrun`),
or once it is refused (unknown name, rejected message: it will never run). While the
counts differ, some task is on its way or running.

Every process of a replay counts: workers and scheduler from start (`create_app` calls
`install` when the settings name a simulated clock file), the replay driver while it
feeds (`counting`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery.signals import before_task_publish, task_postrun, task_rejected, task_unknown

from worker.settings import Settings
from worker.store.client import StatePipeline, StateRedis, connect_state
from worker.store.keys import Keys


class _Counter:
    """INCRs one key, on a connection of this process (a forked child opens its own)."""

    def __init__(self, settings: Settings, key: str) -> None:
        self._settings, self._key = settings, key
        self._client: tuple[int, StateRedis] | None = None

    def __call__(self, **_: Any) -> None:
        if self._client is None or self._client[0] != os.getpid():
            self._client = (os.getpid(), connect_state(str(self._settings.redis_url)))
        self._client[1].incr(self._key)


_SIGNALS = ((before_task_publish, "published"), (task_postrun, "finished"),
            (task_unknown, "finished"), (task_rejected, "finished"))  # fmt: skip


def _counters(settings: Settings) -> list[tuple[Any, _Counter]]:
    keys = Keys(settings.key_prefix, settings.shards)
    names = {"published": keys.replay_published, "finished": keys.replay_finished}
    return [(signal, _Counter(settings, names[which])) for signal, which in _SIGNALS]


def install(settings: Settings) -> None:
    """Count this process's publishes and runs for good (a replay's worker or scheduler)."""
    for signal, counter in _counters(settings):
        signal.connect(counter, weak=False)


@contextmanager
def counting(settings: Settings) -> Iterator[None]:
    """Count this process's publishes while inside (the replay driver)."""
    counters = _counters(settings)
    for signal, counter in counters:
        signal.connect(counter, weak=False)
    try:
        yield
    finally:
        for signal, counter in counters:
            signal.disconnect(counter)


def queue_unfinished(pipe: StatePipeline, keys: Keys) -> None:
    """Queue in `pipe` the reads `unfinished` takes (two replies)."""
    pipe.get(keys.replay_published)
    pipe.get(keys.replay_finished)


def unfinished(published: str | None, finished: str | None) -> int:
    """Tasks published and not yet run, from the replies of `queue_unfinished`."""
    return int(published or 0) - int(finished or 0)
