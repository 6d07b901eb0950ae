"""The bounded caches kept per process for input-named keys (origins, hosts)."""

from __future__ import annotations

import asyncio

import pytest

from push.delivery import CircuitBreaker
from push.lru import LruCache


def test_lru_forgets_the_least_recently_used_entry_first() -> None:
    cache: LruCache[str, int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3
    assert len(cache) == 2
    assert cache.pop("a") == 1 and cache.pop("a") is None


def test_lru_needs_room_for_one_entry() -> None:
    with pytest.raises(ValueError):
        LruCache[str, int](0)


def test_breaker_remembers_a_bounded_number_of_closed_route_keys() -> None:
    # Webhook hosts are route keys: one per receiver a producer names.
    breaker = CircuitBreaker(closed_keys_kept=8, clock=lambda: 1000.0)

    async def go() -> None:
        for n in range(100):
            assert await breaker.before(f"webhook:host{n}") == (0.0, False)

    asyncio.run(go())
    assert len(breaker._closed_seen) == 8
