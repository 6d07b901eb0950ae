"""The worker's Redis implementations of push/'s shared stores pass push's own contract
checks, against a real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from push.gateways.apns_auth import MIN_REFRESH_S, ApnsKey, ProviderTokens
from push.testing import ApnsServer
from push.testing.contracts import check_breaker_store, check_rate_limit_store, check_token_cache
from worker.delivery.gateway_stores import RedisBreakerStore, RedisRateLimitStore, RedisTokenCache
from worker.store.client import AsyncStateRedis, connect_state_async

pytestmark = pytest.mark.redis_kinds  # a single node and a cluster


def run_against_redis(
    redis_url: str, prefix: str, check: Callable[[AsyncStateRedis], Awaitable[None]]
) -> None:
    async def main() -> None:
        client = connect_state_async(redis_url)
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


def test_a_token_apns_calls_expired_is_not_replaced_by_any_process_within_20_minutes(
    redis_url: str, key_prefix: str
) -> None:
    # Two processes share the provider token through Redis. One is told its token
    # expired 5 minutes after minting; the other, starting then, must use that token,
    # not mint its own (APNs would refuse a new one: TooManyProviderTokenUpdates).
    async def check(client: AsyncStateRedis) -> None:
        key = ApnsKey.from_pem(ApnsServer().signing_key()[0], key_id="K1", team_id="T1")
        first = ProviderTokens(key, RedisTokenCache(client, key_prefix))
        issued = time.time()
        token = await first.token(now=issued)
        assert await first.invalidate(token, now=issued + 300) > 0
        second = ProviderTokens(key, RedisTokenCache(client, key_prefix))
        assert await second.token(now=issued + 301) == token
        assert second.minted == 0
        # 20 minutes on, the expired token goes, and the next process mints one
        assert await second.invalidate(token, now=issued + MIN_REFRESH_S) == 0.0
        third = ProviderTokens(key, RedisTokenCache(client, key_prefix))
        assert await third.token(now=issued + MIN_REFRESH_S + 1) != token
        assert third.minted == 1

    run_against_redis(redis_url, key_prefix, check)
