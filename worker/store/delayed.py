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
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from worker.store.client import StatePipeline, StateRedis
from worker.store.keys import DelayedKeys, Keys
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
    """The delayed jobs, split into `keys.shards` shards by job id (a job id always lands
    in one shard, so scheduling it again still replaces it); claims walk every shard."""

    def __init__(self, client: StateRedis, keys: Keys, scripts: Scripts) -> None:
        self._client = client
        self._keys = keys
        self._scripts = scripts

    def _of(self, job_id: str) -> DelayedKeys:
        return self._keys.delayed(self._keys.shard(job_id))

    def schedule(self, job: Job, due: float, pipe: StatePipeline | None = None) -> None:
        """Park `job` until `due` (epoch s), replacing a pending job of the same id."""
        target = pipe if pipe is not None else self._client.pipeline(transaction=True)
        shard = self._of(job.job_id)
        target.hset(shard.jobs, job.job_id, job.payload())
        target.zadd(shard.due, {job.job_id: due})
        if pipe is None:
            target.execute()

    def claim_due(self, now: float, limit: int = 500, lease_s: float = 60.0) -> list[Claimed]:
        """Claim up to `limit` due jobs from each shard (one round trip: one script per
        shard, each in its shard's slot)."""
        try:
            replies = self._claim_shards(now, limit, lease_s)
        except redis.exceptions.NoScriptError:
            # A cluster client does not load scripts for a pipeline (a single node's
            # does), and a promoted replica may not have them: load, then claim again
            # (a shard that did claim is claimed again when its lease runs out).
            self._scripts.load(self._client)
            replies = self._claim_shards(now, limit, lease_s)
        claimed: list[Claimed] = []
        for flat in replies:
            pairs = zip(flat[::2], flat[1::2], strict=True)
            claimed += [Claimed(Job.from_payload(i, p), p) for i, p in pairs]
        return claimed

    def _claim_shards(self, now: float, limit: int, lease_s: float) -> list[list[str]]:
        pipe = self._client.pipeline(transaction=False)
        for shard in self._keys.all_shards:
            keys = self._keys.delayed(shard).all()
            Scripts.call_in(pipe, self._scripts.delayed_claim, keys, [now, limit, lease_s])
        replies: list[list[str]] = pipe.execute()
        return replies

    def ack_many(self, claimed: Sequence[Claimed]) -> None:
        """Acknowledge claimed jobs (one round trip); a job scheduled again since its
        claim stays pending."""
        pipe = self._client.pipeline(transaction=False)
        for c in claimed:
            keys = self._of(c.job.job_id).all()
            Scripts.call_in(pipe, self._scripts.delayed_ack, keys, [c.job.job_id, c.payload])
        if claimed:
            pipe.execute()

    def drop(self, match: Callable[[Job], bool]) -> int:
        """Remove every pending or claimed job for which `match(job)`; returns how many.
        Reads every shard whole (HSCAN): for rare maintenance (erasure), not for a hot
        path. A claimed job's task may be on its way already: its handler must find
        nothing to do (firing checks that the shopper still exists)."""
        dropped = 0
        for shard in self._keys.all_shards:
            keys = self._keys.delayed(shard)
            doomed = [
                job_id
                for job_id, payload in self._client.hscan_iter(keys.jobs, count=1000)
                if match(Job.from_payload(job_id, payload))
            ]
            if not doomed:
                continue
            pipe = self._client.pipeline(transaction=True)  # one shard: one slot
            pipe.hdel(keys.jobs, *doomed)
            pipe.zrem(keys.due, *doomed)
            pipe.zrem(keys.inflight, *doomed)
            dropped += int(pipe.execute()[0])
        return dropped

    def due_at(self, job_id: str) -> float | None:
        score = self._client.zscore(self._of(job_id).due, job_id)
        return float(score) if score is not None else None

    def counts(self, until: float = math.inf) -> int:
        """How many jobs are parked with a due time up to `until` (every shard)."""
        pipe = self._client.pipeline(transaction=False)
        for shard in self._keys.all_shards:
            pipe.zcount(self._keys.delayed(shard).due, "-inf", until)
        return sum(int(n) for n in pipe.execute())

    def queue_unsettled(self, pipe: StatePipeline, until: float) -> None:
        """Queue in `pipe` counts whose sum is the jobs parked with a due time up to
        `until` plus those claimed and not yet acknowledged (a poller has them, their
        tasks are on their way to the queues), every shard: 0 when none is pending."""
        for shard in self._keys.all_shards:
            pipe.zcount(self._keys.delayed(shard).due, "-inf", until)
            pipe.zcard(self._keys.delayed(shard).inflight)

    def last_due(self, until: float) -> float | None:
        """When the latest parked job due by `until` is due (epoch s), or None."""
        pipe = self._client.pipeline(transaction=False)
        for shard in self._keys.all_shards:
            pipe.zrevrangebyscore(
                self._keys.delayed(shard).due, until, "-inf", start=0, num=1, withscores=True
            )
        return max((float(rows[0][1]) for rows in pipe.execute() if rows), default=None)

    def next_due(self) -> float:
        """When the earliest parked job is due (epoch s), or infinity."""
        pipe = self._client.pipeline(transaction=False)
        for shard in self._keys.all_shards:
            pipe.zrange(self._keys.delayed(shard).due, 0, 0, withscores=True)
        return min((float(rows[0][1]) for rows in pipe.execute() if rows), default=math.inf)
