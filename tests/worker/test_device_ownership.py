"""A device belongs to one shopper: registrations that race for a token leave it with
exactly one, and delivery never sends to a device its shopper no longer owns."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.clock import RUN_NOW
from worker.service import ingest
from worker.service.runtime import Runtime
from worker.shoppers.contacts import device_id

pytestmark = pytest.mark.redis_kinds  # the move is single-slot steps: proven on a cluster

TOKENS = 150  # each registered by two shoppers at once: 300 registrations


def race(pairs: list[tuple[Callable[[], object], Callable[[], object]]]) -> None:
    """Run each pair's two calls at the same moment, the pairs on eight threads."""
    barriers = [threading.Barrier(2) for _ in pairs]

    def run(job: tuple[int, int]) -> None:
        n, side = job
        barriers[n].wait(timeout=30)
        pairs[n][side]()

    # Pair mates are adjacent: a thread never waits for a mate no thread will take.
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(run, [(n, side) for n in range(len(pairs)) for side in (0, 1)]))


def registration(rt: Runtime, user: str, token: str) -> Callable[[], object]:
    payload = {"user_id": user, "channel": "fcm", "token": token}
    return lambda: ingest.register_device(rt, payload, RUN_NOW)


def misplaced(rt: Runtime, n: int, token: str) -> tuple[int, str | None, list[str]] | None:
    """None if `token` is owned by a{n} or b{n} and listed under its owner only."""
    did = device_id("fcm", token)
    owner = rt.redis.get(rt.keys.device_owner(did))
    holders = [u for u in (f"a{n}", f"b{n}") if did in rt.contacts.devices(u)]
    return None if owner is not None and holders == [owner] else (n, owner, holders)


def test_concurrent_registrations_of_one_token_leave_one_owner_listing_it(
    runtime: Runtime,
) -> None:
    tokens = [f"race-token-{n:03d}" for n in range(TOKENS)]
    race(
        [
            (registration(runtime, f"a{n}", t), registration(runtime, f"b{n}", t))
            for n, t in enumerate(tokens)
        ]
    )
    assert [m for n, t in enumerate(tokens) if (m := misplaced(runtime, n, t))] == []


def test_an_unregistration_racing_a_move_leaves_the_new_owner_its_claim(
    runtime: Runtime,
) -> None:
    tokens = [f"release-token-{n:03d}" for n in range(TOKENS)]
    for n, token in enumerate(tokens):
        registration(runtime, f"a{n}", token)()

    def unregistration(user: str, token: str) -> Callable[[], object]:
        payload = {"user_id": user, "channel": "fcm", "token": token}
        return lambda: ingest.unregister_device(runtime, payload, 0.0)

    race(
        [
            (unregistration(f"a{n}", t), registration(runtime, f"b{n}", t))
            for n, t in enumerate(tokens)
        ]
    )
    assert [m for n, t in enumerate(tokens) if (m := misplaced(runtime, n, t))] == []
