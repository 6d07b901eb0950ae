"""Delayed jobs: parked by due time, claimed once, re-claimed if the poller died."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.clock import FIXED_NOW
from worker.service.runtime import Runtime
from worker.store.delayed import DelayedJobs, Job
from worker.store.scripts import Scripts

pytestmark = pytest.mark.redis_kinds  # a single node and a cluster

NOW = FIXED_NOW  # leases and due times are compared with the `now` passed in


def jobs(rt: Runtime) -> DelayedJobs:
    return DelayedJobs(rt.redis, rt.keys, Scripts.register(rt.redis))


def test_jobs_are_claimed_only_when_due(runtime: Runtime) -> None:
    delayed = jobs(runtime)
    delayed.schedule(Job("a", "pushrec.fire", {"n": 1}), NOW + 60)
    delayed.schedule(Job("b", "pushrec.fire", {"n": 2}), NOW - 1)
    [claimed] = delayed.claim_due(NOW)
    assert claimed.job.job_id == "b"
    delayed.ack_many([claimed])
    assert [c.job.kwargs for c in delayed.claim_due(NOW + 60)] == [{"n": 1}]


def test_rescheduling_an_id_replaces_it_as_a_debounce(runtime: Runtime) -> None:
    delayed = jobs(runtime)
    delayed.schedule(Job("cart:u1", "pushrec.fire", {"trigger": "e1"}), NOW + 10)
    delayed.schedule(Job("cart:u1", "pushrec.fire", {"trigger": "e2"}), NOW + 20)
    assert delayed.claim_due(NOW + 15) == []
    [claimed] = delayed.claim_due(NOW + 20)
    assert claimed.job.kwargs == {"trigger": "e2"}


def test_concurrent_pollers_never_claim_a_job_twice(runtime: Runtime) -> None:
    delayed = jobs(runtime)
    for n in range(300):
        delayed.schedule(Job(f"j{n}", "pushrec.fire", {}), NOW - n)
    with ThreadPoolExecutor(4) as pool:
        batches = list(pool.map(lambda _: delayed.claim_due(NOW, limit=25), range(40)))
    claimed = [c.job.job_id for batch in batches for c in batch]
    assert sorted(claimed) == sorted(f"j{n}" for n in range(300))


def test_a_claim_never_acknowledged_comes_back_after_its_lease(runtime: Runtime) -> None:
    delayed = jobs(runtime)
    delayed.schedule(Job("x", "pushrec.fire", {}), NOW)
    assert len(delayed.claim_due(NOW, lease_s=30)) == 1  # poller dies here
    assert delayed.claim_due(NOW + 10) == []
    [again] = delayed.claim_due(NOW + 31)
    delayed.ack_many([again])
    assert delayed.claim_due(NOW + 1000) == []


def test_ack_keeps_a_job_rescheduled_while_in_flight(runtime: Runtime) -> None:
    delayed = jobs(runtime)
    delayed.schedule(Job("cart:u1", "pushrec.fire", {"trigger": "e1"}), NOW)
    [claimed] = delayed.claim_due(NOW)
    delayed.schedule(Job("cart:u1", "pushrec.fire", {"trigger": "e2"}), NOW + 30)
    delayed.ack_many([claimed])
    [later] = delayed.claim_due(NOW + 30)
    assert later.job.kwargs == {"trigger": "e2"}
