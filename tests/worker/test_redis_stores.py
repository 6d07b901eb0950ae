"""The worker's Redis implementations of push/'s shared stores pass push's own contract
checks, against a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from push.testing.contracts import check_breaker_store, check_rate_limit_store, check_token_cache
from worker.delivery.gateway_stores import RedisBreakerStore, RedisRateLimitStore, RedisTokenCache


def run_against_redis(
    redis_url: str, prefix: str, check: Callable[[aioredis.Redis], Awaitable[None]]
) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            await check(client)
        finally:
            await client.aclose()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("name", "check"),
    [
        ("token cache", lambda c, p: check_token_cache(RedisTokenCache(c, p))),
        ("breaker", lambda c, p: check_breaker_store(RedisBreakerStore(c, p))),
        ("rate limit", lambda c, p: check_rate_limit_store(RedisRateLimitStore(c, p))),
    ],
)
def test_redis_store_keeps_the_push_store_contract(
    redis_url: str, key_prefix: str, name: str, check: Callable[..., Awaitable[None]]
) -> None:
    run_against_redis(redis_url, key_prefix, lambda client: check(client, key_prefix))
