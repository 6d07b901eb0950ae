"""The leader lock, with two real `pushrec scheduler` processes: one leads and runs the
periodic jobs, the other runs none; SIGKILL the leader and the other leads once the lease
has run out, and each delayed job reaches its queue exactly once (none lost, none twice).
No worker consumes the queue here, so the test counts the scheduler's own effect: the
task messages it put on the broker."""

from __future__ import annotations

import base64
import json
import re
import time
from collections import Counter
from pathlib import Path

from tests.worker.conftest import WorkerProcess, wait_for
from worker.contract import NOOP
from worker.service.runtime import Runtime
from worker.settings import Settings
from worker.store.delayed import Job

LEASE_S = 4.0
JOBS = 24
LEADS = "is the leader"
FOLLOWS = " follows: another one leads"
MOVED = re.compile(r"^moved (\d+) due delayed jobs")  # the periodic drain, when it moved some


def queued_jobs(rt: Runtime, settings: Settings) -> Counter[int]:
    """How many task messages the broker's activity queue holds for each job number."""
    raw = rt.redis.lrange(settings.broker_key_prefix + settings.queue_activity, 0, -1)
    found: Counter[int] = Counter()
    for message in map(json.loads, raw):
        assert message["headers"]["task"] == NOOP
        _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        found[kwargs["n"]] += 1
    return found


def moved(process: WorkerProcess) -> tuple[int, int]:
    """Jobs the process's periodic drain moved (before, after) it logged that it leads."""
    counts = [0, 0]
    led = 0
    for record in process.records():
        led |= LEADS in record["message"]
        if match := MOVED.match(record["message"]):
            counts[led] += int(match[1])
    return counts[0], counts[1]


def test_one_scheduler_leads_and_the_other_takes_over_the_jobs_once_each(
    settings: Settings, runtime: Runtime, tmp_path: Path
) -> None:
    env = {"PUSHREC_SCHEDULER_LEASE_S": str(LEASE_S), "PUSHREC_INDEX_REBUILD_CRON": ""}

    def scheduler(name: str, ready: str) -> WorkerProcess:
        return WorkerProcess(settings, tmp_path / f"{name}.log", name, 1, env=env,
                             command=("scheduler", "--loglevel=INFO"), ready=ready)  # fmt: skip

    rt = runtime
    leader = scheduler("s1", LEADS)
    follower = scheduler("s2", FOLLOWS)
    try:
        start = time.time()
        for n in range(JOBS):  # one due every 0.4 s, over about two leases
            rt.delayed.schedule(Job(f"job-{n}", NOOP, {"n": n}), start + 0.4 * n)
        wait_for(lambda: len(queued_jobs(rt, settings)) >= 4, what="the leader moving jobs")
        time.sleep(0.5)  # half a poll: kill between two drains, not inside one
        leader.kill()
        wait_for(
            lambda: LEADS in follower.log(),
            timeout=LEASE_S + 5,  # the lease, one poll of the follower, slack
            what="a new leader within the lease",
        )
        wait_for(lambda: len(queued_jobs(rt, settings)) == JOBS, what="every job moved")
        time.sleep(1.5)  # a poll more: nothing may follow

        assert queued_jobs(rt, settings) == Counter(range(JOBS))  # each once
        assert [rt.delayed.due_at(f"job-{n}") for n in range(JOBS)] == [None] * JOBS
        # only the leader ran the periodic drain; between them, each job moved once
        (before, s2_moved), (_, s1_moved) = moved(follower), moved(leader)
        assert before == 0 and s1_moved > 0 and s2_moved > 0
        assert s1_moved + s2_moved == JOBS
        assert sum(LEADS in r["message"] for r in follower.records()) == 1
    finally:
        leader.stop()
        follower.stop()
