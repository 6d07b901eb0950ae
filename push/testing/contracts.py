"""Contract checks for the store Protocols of `push.stores`, shipped so that every
implementation (in-memory, file, the worker's Redis ones) is held to the same behaviour.

Each ``check_*`` coroutine takes a fresh store and raises AssertionError on the first
broken promise. Keys are random, so a shared backend needs no cleaning between runs::

    asyncio.run(check_breaker_store(RedisBreakerStore(redis, prefix)))
"""

from __future__ import annotations

import asyncio
import time
import uuid

from push.stores import BreakerStore, RateLimitStore, TokenCache

__all__ = ["check_breaker_store", "check_rate_limit_store", "check_token_cache"]


def _key(kind: str) -> str:
    return f"contract:{kind}:{uuid.uuid4().hex}"


async def check_token_cache(cache: TokenCache) -> None:
    key = _key("token")
    assert await cache.get(key) is None, "a new key must be empty"
    assert await cache.add(key, "first", 60) == "first", "add to an empty key stores it"
    assert await cache.add(key, "second", 60) == "first", "add never replaces a live token"
    assert await cache.get(key) == "first"
    await cache.discard(key, "not-the-token")
    assert await cache.get(key) == "first", "discard only deletes the token it names"
    await cache.discard(key, "first")
    assert await cache.get(key) is None
    racers = await asyncio.gather(*(cache.add(key, f"t{i}", 60) for i in range(10)))
    assert len(set(racers)) == 1, "concurrent adds must agree on one winner"
    short = _key("token")
    await cache.add(short, "brief", 1)
    await asyncio.sleep(1.2)
    assert await cache.get(short) is None, "entries expire after their ttl"


async def check_breaker_store(store: BreakerStore) -> None:
    key = _key("breaker")
    assert await store.open_until(key) == 0.0, "a new breaker is closed"
    counts = await asyncio.gather(*(store.add_failure(key, window_s=30) for _ in range(5)))
    assert sorted(counts) == [1, 2, 3, 4, 5], "failure counts are atomic"
    until = time.time() + 60
    await store.trip(key, until)
    assert abs(await store.open_until(key) - until) < 0.01
    assert await store.add_failure(key, window_s=30) == 1, "trip clears the failure count"
    claims = await asyncio.gather(*(store.claim_probe(key, ttl_s=30) for _ in range(5)))
    assert claims.count(True) == 1, "exactly one caller wins the half-open probe"
    await store.reset(key)
    assert await store.open_until(key) == 0.0, "reset closes the breaker"
    assert await store.claim_probe(key, ttl_s=30), "reset forgets the probe claim"
    windowed = _key("breaker")
    await store.add_failure(windowed, window_s=1)
    await asyncio.sleep(1.2)
    assert await store.add_failure(windowed, window_s=1) == 1, "failures expire with the window"


async def check_rate_limit_store(store: RateLimitStore) -> None:
    key = _key("rate")
    now = time.time()
    takes = [await store.take(key, rate=10, burst=3, now=now) for _ in range(4)]
    assert takes[:3] == [(1, 0.0)] * 3, "a full bucket allows `burst` at once"
    assert takes[3][0] == 0, "then nothing is taken"
    assert 0.09 < takes[3][1] <= 0.1 + 1e-6, "and the wait is the time to the next token"
    assert await store.take(key, rate=10, burst=3, now=now + 0.1) == (1, 0.0), "refills at rate"
    assert (await store.take(key, rate=10, burst=3, now=now + 0.1))[0] == 0, "one per 0.1 s"
    later = await asyncio.gather(
        *(store.take(key, rate=10, burst=3, now=now + 10) for _ in range(5))
    )
    assert sum(taken for taken, _ in later) == 3, "refill is capped at burst, atomically"
    assert await store.take(key, rate=10, burst=3, now=now + 20, most=5) == (3, 0.0), (
        "several at once, at most what is there"
    )
