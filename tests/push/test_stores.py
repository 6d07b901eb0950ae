"""The store contracts (push.testing.contracts) against the shipped implementations."""

from __future__ import annotations

import asyncio
from pathlib import Path

from push.stores import FileTokenCache, MemoryBreakerStore, MemoryRateLimitStore, MemoryTokenCache
from push.testing.contracts import check_breaker_store, check_rate_limit_store, check_token_cache


def test_memory_token_cache_meets_the_contract() -> None:
    asyncio.run(check_token_cache(MemoryTokenCache()))


def test_file_token_cache_meets_the_contract(tmp_path: Path) -> None:
    asyncio.run(check_token_cache(FileTokenCache(tmp_path)))


def test_file_token_cache_is_private(tmp_path: Path) -> None:
    cache = FileTokenCache(tmp_path / "cache")
    asyncio.run(cache.add("k", "secret-token", 60))
    [entry] = list((tmp_path / "cache").iterdir())
    assert entry.stat().st_mode & 0o077 == 0


def test_memory_breaker_store_meets_the_contract() -> None:
    asyncio.run(check_breaker_store(MemoryBreakerStore()))


def test_memory_rate_limit_store_meets_the_contract() -> None:
    asyncio.run(check_rate_limit_store(MemoryRateLimitStore()))
