"""Delayed work in Redis: a sorted set by due time, claimed atomically when due.

Rules with a delay ("cart untouched for 30 minutes"), deferrals to the end of quiet
hours and gateway retries with long waits are parked here, never as Celery ETA tasks
(those sit in worker memory and are redelivered after the visibility timeout). A poller
claims due jobs with a Lua script, enqueues their task and acknowledges them; a poller
that dies in between leaves a lease that expires, and the job is claimed again. Job
handlers are idempotent, so the rare second run changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from worker.store.keys import Keys
from worker.store.scripts import Scripts


@dataclass(frozen=True)
class Job:
    """A unit of delayed work: `task` (a pushrec task name) with JSON `kwargs`.

    `job_id` names the job: scheduling an id again replaces it (a debounce), so e.g. one
    shopper has at most one pending cart reminder, due 30 minutes after the last change.
    """

    job_id: str
    task: str
    kwargs: dict[str, Any]

    def payload(self) -> str:
        return json.dumps({"task": self.task, "kwargs": self.kwargs}, sort_keys=True)

    @classmethod
    def from_payload(cls, job_id: str, payload: str) -> Job:
        data = json.loads(payload)
        return cls(job_id=job_id, task=data["task"], kwargs=data["kwargs"])


@dataclass(frozen=True)
class Claimed:
    job: Job
    payload: str  # as claimed; the ack compares it


class DelayedJobs:
    def __init__(self, client: redis.Redis, keys: Keys, scripts: Scripts) -> None:
        self._client = client
        self._keys = keys
        self._scripts = scripts

    def _key_list(self) -> list[str]:
        k = self._keys
        return [k.delayed_due, k.delayed_inflight, k.delayed_jobs]

    def schedule(self, job: Job, due: float, pipe: redis.client.Pipeline | None = None) -> None:
        """Park `job` until `due` (epoch s), replacing a pending job of the same id."""
        target = pipe if pipe is not None else self._client.pipeline(transaction=True)
        target.hset(self._keys.delayed_jobs, job.job_id, job.payload())
        target.zadd(self._keys.delayed_due, {job.job_id: due})
        if pipe is None:
            target.execute()

    def claim_due(self, now: float, limit: int = 500, lease_s: float = 60.0) -> list[Claimed]:
        flat = self._scripts.delayed_claim(keys=self._key_list(), args=[now, limit, lease_s])
        pairs = zip(flat[::2], flat[1::2], strict=True)
        return [Claimed(Job.from_payload(i, p), p) for i, p in pairs]

    def ack_many(self, claimed: Sequence[Claimed]) -> None:
        """Acknowledge claimed jobs (one round trip); a job scheduled again since its
        claim stays pending."""
        pipe = self._client.pipeline(transaction=False)
        for c in claimed:
            self._scripts.delayed_ack(
                keys=self._key_list(), args=[c.job.job_id, c.payload], client=pipe
            )
        if claimed:
            pipe.execute()

    def drop(self, match: Callable[[Job], bool]) -> int:
        """Remove every pending or claimed job for which `match(job)`; returns how many.
        Reads the whole set (HSCAN): for rare maintenance (erasure), not for a hot path.
        A claimed job's task may be on its way already: its handler must find nothing
        to do (firing checks that the shopper still exists)."""
        doomed = [
            job_id
            for job_id, payload in self._client.hscan_iter(self._keys.delayed_jobs, count=1000)
            if match(Job.from_payload(job_id, payload))
        ]
        if not doomed:
            return 0
        pipe = self._client.pipeline(transaction=True)
        pipe.hdel(self._keys.delayed_jobs, *doomed)
        pipe.zrem(self._keys.delayed_due, *doomed)
        pipe.zrem(self._keys.delayed_inflight, *doomed)
        return int(pipe.execute()[0])

    def due_at(self, job_id: str) -> float | None:
        score = self._client.zscore(self._keys.delayed_due, job_id)
        return float(score) if score is not None else None
