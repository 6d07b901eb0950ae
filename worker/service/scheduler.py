"""The scheduler process: moves due delayed jobs to Celery and runs periodic jobs.

Several scheduler processes may run (one per machine, for availability); a Redis lock
makes one of them the leader, and only the leader runs periodic jobs (APScheduler 3 has
no locking of its own: two schedulers would both fire every job). Claiming due delayed
jobs is atomic anyway (a Lua claim), so a brief overlap at hand-over fires nothing twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from worker.contract import DELIVER, FIRE, Enqueue, enqueue_batched
from worker.delivery.outbox import Outbox
from worker.store.delayed import DelayedJobs
from worker.store.lease import Lease

log = logging.getLogger(__name__)


def drain_due(
    delayed: DelayedJobs, enqueue: Enqueue, now: Callable[[], float], batch: int = 500
) -> int:
    """Enqueue every due delayed job (due by `now()`: `Settings.now`); returns how many.
    Due rule firings travel together, `INTERNAL_BATCH` per fire task (a price-drop fan-out
    is thousands of them). A crash between enqueue and ack re-runs the jobs after their
    lease (handlers are idempotent)."""
    moved = 0
    while True:
        claimed = delayed.claim_due(now(), limit=batch)
        fires = [c.job.kwargs for c in claimed if c.job.task == FIRE]
        enqueue_batched(enqueue, FIRE, "jobs", fires)
        for item in claimed:
            if item.job.task != FIRE:
                enqueue(item.job.task, item.job.kwargs)
        delayed.ack_many(claimed)
        moved += len(claimed)
        if len(claimed) < batch:
            if moved:
                log.info("moved %d due delayed jobs to the queues", moved)
            return moved


def resend_stuck(outbox: Outbox, enqueue: Enqueue, older_than_s: float = 300) -> int:
    """Enqueue delivery again for messages whose deliver task was lost (delivery is
    idempotent per device, so a slow rather than lost task costs only a check)."""
    mids = outbox.stuck(time.time(), older_than_s)
    enqueue_batched(enqueue, DELIVER, "message_ids", mids)
    return len(mids)


class Scheduler:
    """Leader election around an APScheduler `BackgroundScheduler`."""

    def __init__(
        self,
        lock: Lease,
        jobs: list[tuple[Callable[[], Any], dict[str, Any]]],
        poll_s: float = 1.0,
    ) -> None:
        self._lock = lock
        self._jobs = jobs  # (function, APScheduler add_job trigger kwargs)
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._scheduler: BackgroundScheduler | None = None

    def _lead(self) -> None:
        scheduler = BackgroundScheduler(timezone="UTC")
        for func, trigger in self._jobs:
            scheduler.add_job(func, max_instances=1, coalesce=True, **trigger)
        scheduler.start()
        self._scheduler = scheduler
        log.info("scheduler %s is the leader", self._lock.owner)

    def _follow(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
            log.warning("scheduler %s lost the lead", self._lock.owner)

    def run(self) -> None:
        """Until `stop()`: lead while holding the lock, wait for it otherwise."""
        following = False
        try:
            while not self._stop.is_set():
                leading = self._scheduler is not None
                holds = self._lock.renew() if leading else self._lock.acquire()
                if holds and not leading:
                    self._lead()
                elif not holds and leading:
                    self._follow()
                elif not holds and not following:
                    log.info("scheduler %s follows: another one leads", self._lock.owner)
                following = not holds
                self._stop.wait(self._poll_s)
        finally:
            self._follow()
            self._lock.release()

    def stop(self) -> None:
        self._stop.set()
