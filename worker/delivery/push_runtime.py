"""The push library opened once per worker thread, with its shared state in Redis.

A `PushRuntime` owns one event loop (a loop runs in one thread at a time, so each pool
thread gets its own), the gateways over their HTTP clients, and a `Deliverer` whose
circuit breaker, rate limit and APNs provider tokens live in Redis, so every process and
host shares them. The sender runs its concurrent sends on `loop` and takes the gateway
latencies from `timed`.

The loop is uvloop's: the loop's own work per request is C there, which a batch's
hundred concurrent sends gain from; entering and leaving it costs more, which a single
event pays once (figures: docs/push.md, "Which client for which channel").
"""

from __future__ import annotations

from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import uvloop

from push.config import GatewayConfig, open_gateways
from push.delivery import CircuitBreaker, Deliverer, RateLimit, RateLimiter, RetryPolicy
from push.gateway import Router
from push.messages import Channel
from worker.delivery.gateway_stores import RedisBreakerStore, RedisRateLimitStore, RedisTokenCache
from worker.delivery.timing import TimedSender
from worker.settings import Settings
from worker.store.client import connect_state_async

T = TypeVar("T")


class PushRuntime:
    """One event loop per worker thread, the gateways over their HTTP clients, and a
    `Deliverer` whose breaker, rate limit and APNs provider tokens are shared in Redis.
    A prebuilt `router` (tests: `push.fake.RecordingGateway`s) replaces the gateways
    that `config` would open; its owner closes it, `close()` closes only what this
    runtime opened."""

    def __init__(
        self, settings: Settings, config: GatewayConfig, router: Router | None = None
    ) -> None:
        assert settings.redis_url is not None
        self.loop = uvloop.new_event_loop()
        self._stack = AsyncExitStack()
        self._redis = connect_state_async(settings.redis_url)
        prefix = settings.key_prefix
        if router is None:
            router = self.run(
                self._stack.enter_async_context(
                    open_gateways(config, token_cache=RedisTokenCache(self._redis, prefix))
                )
            )
        self.timed = TimedSender(router)
        limit = RateLimit(rate=settings.push_rate_per_s, burst=settings.push_rate_burst)
        self.deliverer = Deliverer(
            self.timed,
            breaker=CircuitBreaker(RedisBreakerStore(self._redis, prefix)),
            limiter=RateLimiter(
                dict.fromkeys(Channel, limit), RedisRateLimitStore(self._redis, prefix)
            ),
            retry=RetryPolicy(max_attempts=settings.push_max_attempts),
        )

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self._stack.aclose())
        self.run(self._redis.aclose())
        self.loop.close()
