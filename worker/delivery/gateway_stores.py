"""push/'s shared-state Protocols on Redis, so every sending process shares one circuit
breaker, one rate limit and one APNs provider token per credential."""

from __future__ import annotations

import math
import time

from worker.store.client import AsyncStateRedis
from worker.store.keys import BREAKER_ROUTES_KEPT_S, Keys

_TAKE_TOKENS = """
-- KEYS: bucket hash {tokens, ts}   ARGV: rate, burst, now, most
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or burst)
local ts = tonumber(redis.call('HGET', KEYS[1], 'ts') or now)
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
-- 1e-4: tolerate float error in elapsed time at epoch magnitudes (as push.stores does)
local taken = math.min(tonumber(ARGV[4]), math.floor(tokens + 1e-4))
local wait = 0
if taken > 0 then tokens = math.max(0, tokens - taken) else wait = (1 - tokens) / rate end
-- %.17g: Lua's tostring keeps 14 digits, too few for epoch seconds
local function exact(x) return string.format('%.17g', x) end
redis.call('HSET', KEYS[1], 'tokens', exact(tokens), 'ts', exact(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {taken, exact(wait)}
"""

_DISCARD_IF_SAME = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisTokenCache:
    def __init__(self, client: AsyncStateRedis, prefix: str) -> None:
        self._client = client
        self._key = Keys(prefix).push_token
        self._discard = client.register_script(_DISCARD_IF_SAME)

    async def get(self, key: str) -> str | None:
        value = await self._client.get(self._key(key))
        return str(value) if value is not None else None

    async def add(self, key: str, token: str, ttl_s: float) -> str:
        full = self._key(key)
        await self._client.set(full, token, nx=True, px=max(1, int(ttl_s * 1000)))
        stored = await self._client.get(full)
        return str(stored) if stored is not None else token

    async def discard(self, key: str, token: str) -> None:
        await self._discard(keys=[self._key(key)], args=[token])


class RedisBreakerStore:
    """Each tripped route is also noted in `Keys.breaker_routes`, so metrics can report
    every breaker's state without scanning the keyspace."""

    def __init__(self, client: AsyncStateRedis, prefix: str) -> None:
        self._client = client
        self._keyring = Keys(prefix)

    def _keys(self, key: str) -> tuple[str, str, str]:
        route = self._keyring.breaker(key)
        return route.open, route.failures, route.probe

    async def open_until(self, key: str) -> float:
        value = await self._client.get(self._keys(key)[0])
        return float(value) if value is not None else 0.0

    async def add_failure(self, key: str, *, window_s: float) -> int:
        failures = self._keys(key)[1]
        pipe = self._client.pipeline(transaction=True)
        # The window starts with the first failure: SET NX creates the counter with its
        # expiry and INCR keeps it (PEXPIRE NX would need Redis 7; the bundled one is 6.2).
        pipe.set(failures, 0, nx=True, px=max(1, int(window_s * 1000)))
        pipe.incr(failures)
        _, count = await pipe.execute()
        return int(count)

    async def trip(self, key: str, until: float) -> None:
        open_key, failures, _ = self._keys(key)
        pipe = self._client.pipeline(transaction=True)
        # kept a minute past `until`, so the half-open probe still finds it
        pipe.set(open_key, repr(until), pxat=int((until + 60) * 1000))
        pipe.delete(failures)
        await pipe.execute()
        # Outside the MULTI: another slot (Redis Cluster), and only metrics read it. Routes
        # a day past their trip are pruned here, where the set grows.
        now = time.time()
        routes = self._client.pipeline(transaction=False)
        routes.zadd(self._keyring.breaker_routes, {key: now})
        routes.zremrangebyscore(self._keyring.breaker_routes, "-inf", now - BREAKER_ROUTES_KEPT_S)
        await routes.execute()

    async def claim_probe(self, key: str, *, ttl_s: float) -> bool:
        return bool(
            await self._client.set(self._keys(key)[2], "1", nx=True, px=max(1, int(ttl_s * 1000)))
        )

    async def reset(self, key: str) -> None:
        await self._client.delete(*self._keys(key))


class RedisRateLimitStore:
    def __init__(self, client: AsyncStateRedis, prefix: str) -> None:
        self._key = Keys(prefix).rate_bucket
        self._take = client.register_script(_TAKE_TOKENS)

    async def take(
        self, key: str, *, rate: float, burst: float, now: float, most: int = 1
    ) -> tuple[int, float]:
        if rate <= 0 or math.isinf(rate):
            return most, 0.0
        taken, wait = await self._take(keys=[self._key(key)], args=[rate, burst, now, most])
        return int(taken), float(wait)
