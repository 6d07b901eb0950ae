"""The delivery policy, declared once: circuit breaker, rate limit and retry schedule
around any gateway.

`Deliverer.send(message, attempt)` returns the gateway's `DeliveryResult`, except that

* an open breaker or an exhausted rate limit answers ``retry`` without a request;
* every ``retry`` carries `retry_after`: the gateway's Retry-After when it gave one
  (capped at `RetryPolicy.max_retry_after_s`), else capped exponential backoff with full
  jitter (``uniform(0, min(cap, base * 2**attempt))``);
* a ``retry`` at the last allowed attempt becomes ``failed`` with reason
  ``retries_exhausted:<last reason>``: retries are finite.

The caller (the worker) re-queues a ``retry`` after `retry_after` seconds with
``attempt + 1``. Breaker and rate-limit state live in pluggable stores
(`push.stores`), shared by all processes when backed by Redis.

Breaker: per route key (`Gateway.route_key`). A ``credentials`` result trips it at once
for `auth_open_s`; `failure_threshold` transient gateway failures (5xx, timeouts,
network errors; not 429) within `window_s` trip it for `open_s`. After that one caller
wins `claim_probe` and sends a half-open probe; its success closes the breaker, its
failure re-opens it. Others get ``retry`` meanwhile. A credentials trip is logged at
ERROR with ``extra={"event": "credentials_rejected"}`` (a transient trip at WARNING, event
``breaker_opened``): a stable name for alerts.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

from push.gateway import RoutedSender, send_one
from push.lru import LruCache
from push.messages import Channel, Message
from push.result import DeliveryResult, Outcome
from push.stores import (
    BreakerStore,
    MemoryBreakerStore,
    MemoryRateLimitStore,
    RateLimitStore,
)

__all__ = ["CircuitBreaker", "Deliverer", "RateLimit", "RateLimiter", "RetryPolicy"]

log = logging.getLogger("push.delivery")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and when to retry. ``max_attempts`` counts the first attempt."""

    max_attempts: int = 8
    base_s: float = 2.0
    cap_s: float = 600.0
    max_retry_after_s: float = 3600.0

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full jitter: uniform between 0 and the capped exponential bound."""
        bound = min(self.cap_s, self.base_s * 2 ** max(0, attempt))
        return (rng or random).uniform(0.0, bound)

    def decide(
        self, result: DeliveryResult, attempt: int, rng: random.Random | None = None
    ) -> DeliveryResult:
        """`result` with `retry_after` filled in, or turned into ``failed`` when this
        was the last attempt. Non-retry results pass through unchanged."""
        if result.outcome is not Outcome.RETRY:
            return result
        if attempt + 1 >= self.max_attempts:
            return replace(
                result,
                outcome=Outcome.FAILED,
                reason=f"retries_exhausted:{result.reason}",
                retry_after=None,
            )
        if result.retry_after is not None:
            return result.with_retry_after(min(result.retry_after, self.max_retry_after_s))
        return result.with_retry_after(self.backoff(attempt, rng))


def _is_gateway_failure(result: DeliveryResult) -> bool:
    """5xx, timeouts and network errors count towards opening the breaker; 429 does not
    (Retry-After handles it) and nor do the breaker's or limiter's own retries."""
    if result.outcome is not Outcome.RETRY:
        return False
    if result.reason.endswith((":breaker_open", ":rate_limited")):
        return False
    return result.status is None or result.status >= 500


class CircuitBreaker:
    def __init__(
        self,
        store: BreakerStore | None = None,
        *,
        failure_threshold: int = 5,
        window_s: float = 30.0,
        open_s: float = 30.0,
        auth_open_s: float = 300.0,
        probe_ttl_s: float = 15.0,
        closed_recheck_s: float = 1.0,
        closed_keys_kept: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store or MemoryBreakerStore()
        # A closed breaker is re-read from the (shared) store at most this often: a trip
        # by another process is seen within it, and a send costs no store read.
        self.closed_recheck_s = closed_recheck_s
        # route key -> when the store last said closed; webhook hosts and push service
        # origins come from input, so the keys are unbounded: keep the most recent
        self._closed_seen: LruCache[str, float] = LruCache(closed_keys_kept)
        # route key -> the store read in flight: the concurrent sends of a batch all start
        # at once and would each ask the store before the first answer is cached
        self._reading: dict[str, asyncio.Future[float]] = {}
        self.failure_threshold = failure_threshold
        self.window_s = window_s
        self.open_s = open_s
        self.auth_open_s = auth_open_s
        self.probe_ttl_s = probe_ttl_s
        self._clock = clock

    async def before(self, key: str) -> tuple[float, bool]:
        """``(wait_s, is_probe)``: wait 0 means go ahead (as the probe if `is_probe`)."""
        now = self._clock()
        seen = self._closed_seen.get(key)
        if seen is not None and now - seen < self.closed_recheck_s:
            return 0.0, False
        open_until = await self._open_until(key)
        if not open_until:
            self._closed_seen.put(key, now)
            return 0.0, False
        if now < open_until:
            return open_until - now, False
        if await self.store.claim_probe(key, ttl_s=self.probe_ttl_s):
            return 0.0, True
        return self.probe_ttl_s, False

    async def _open_until(self, key: str) -> float:
        """The store's answer, read once for all the callers asking meanwhile."""
        reading = self._reading.get(key)
        if reading is None:
            reading = asyncio.ensure_future(self.store.open_until(key))
            self._reading[key] = reading
            reading.add_done_callback(lambda _: self._reading.pop(key, None))
        # shielded: one caller cancelled (its task timed out) leaves the read to the rest
        return await asyncio.shield(reading)

    async def after(self, key: str, result: DeliveryResult, *, probe: bool) -> None:
        now = self._clock()
        if result.outcome is Outcome.CREDENTIALS or _is_gateway_failure(result):
            self._closed_seen.pop(key)  # the next send asks the store again
        if result.outcome is Outcome.CREDENTIALS:
            log.error(
                "breaker %s opened: credentials rejected (%s)",
                key,
                result.reason,
                extra={"event": "credentials_rejected"},
            )
            await self.store.trip(key, now + self.auth_open_s)
        elif _is_gateway_failure(result):
            if probe:
                await self.store.trip(key, now + self.open_s)
                return
            failures = await self.store.add_failure(key, window_s=self.window_s)
            if failures >= self.failure_threshold:
                log.warning(
                    "breaker %s opened after %d failures",
                    key,
                    failures,
                    extra={"event": "breaker_opened"},
                )
                await self.store.trip(key, now + self.open_s)
        elif probe:
            log.info("breaker %s closed after a successful probe", key)
            await self.store.reset(key)


@dataclass(frozen=True)
class RateLimit:
    """`rate` messages per second sustained, bursts of up to `burst`."""

    rate: float
    burst: float


class RateLimiter:
    """Token buckets per route key in a (shared) store. One store call takes tokens for
    the sends of a key waiting at once, and for as many as this process sent of that key
    in the last `lease_s` (up to `lease_max`): a batch of 100 sends costs about two store
    calls, and so does a steady stream of single sends per `lease_s`, not one per send.
    A leased token not spent within `lease_s` is lost: at most what this process itself
    sent in the last two leases' time, so a process that goes quiet holds nothing back
    for long, and one that starts sending asks for 1, 1, 2, 4... tokens as it ramps up."""

    def __init__(
        self,
        limits: Mapping[Channel, RateLimit],
        store: RateLimitStore | None = None,
        *,
        max_wait_s: float = 1.0,
        lease_max: int = 64,
        lease_s: float = 0.25,
        leases_kept: int = 4096,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.limits = dict(limits)
        self.store = store or MemoryRateLimitStore()
        self.max_wait_s = max_wait_s
        self.lease_max = lease_max
        self.lease_s = lease_s
        self._clock = clock
        self._sleep = sleep
        # key -> (tokens left, spendable until); keys come from input (webhook hosts)
        self._leases: LruCache[str, tuple[int, float]] = LruCache(leases_kept)
        # key -> when its bucket has a token again, as the store last said: until then the
        # others skip the store (no process puts tokens back)
        self._dry: LruCache[str, float] = LruCache(leases_kept)
        # key -> (start of the current lease-long window, tokens spent in it, in the one
        # before): how many tokens the next store call asks for beyond the waiting sends
        self._spent: LruCache[str, tuple[float, int, int]] = LruCache(leases_kept)
        self._asking: dict[str, int] = {}  # key -> sends waiting for a token now
        self._refills: dict[str, asyncio.Future[None]] = {}  # key -> the store call made

    def _spend_leased(self, key: str) -> bool:
        lease = self._leases.get(key)
        if lease is None or lease[0] < 1 or self._clock() >= lease[1]:
            return False
        self._leases.put(key, (lease[0] - 1, lease[1]))
        return True

    def _window(self, key: str, now: float) -> tuple[float, int, int]:
        """`key`'s (start of the current lease-long window, tokens spent in it, in the one
        before) as of `now`: a window older than `lease_s` is rolled over, and the one
        before counts only if it just ended."""
        start, spent, before = self._spent.get(key) or (now, 0, 0)
        if now - start >= self.lease_s:
            before = spent if now - start < 2 * self.lease_s else 0
            start, spent = now, 0
        return start, spent, before

    def _count_spent(self, key: str) -> None:
        now = self._clock()
        start, spent, before = self._window(key, now)
        self._spent.put(key, (start, spent + 1, before))

    def _recently_spent(self, key: str, now: float) -> int:
        """The tokens of `key` this process spent in about the last `lease_s`: what it
        will likely spend in the next one."""
        _, spent, before = self._window(key, now)
        return max(spent, before)

    async def acquire(self, channel: Channel, key: str) -> float:
        """0.0 once a token is taken (after waiting up to `max_wait_s` in total), else
        the seconds the caller should come back after."""
        limit = self.limits.get(channel)
        if limit is None:
            return 0.0
        self._asking[key] = self._asking.get(key, 0) + 1
        try:
            wait = await self._acquire(key, limit)
            if wait == 0.0:
                self._count_spent(key)
            return wait
        finally:
            self._asking[key] -= 1
            if not self._asking[key]:
                del self._asking[key]

    async def _acquire(self, key: str, limit: RateLimit) -> float:
        waited = 0.0
        while True:
            if self._spend_leased(key):
                return 0.0
            if (refill := self._refills.get(key)) is not None:
                # another send is asking the store for this key's sends; shielded: this
                # send being cancelled must not cancel the others' wait
                await asyncio.shield(refill)
                continue
            dry_until = self._dry.get(key) or 0.0
            if (wait := dry_until - self._clock()) <= 0:
                wait = await self._refill(key, limit)
                if wait == 0.0:
                    return 0.0
            wait = max(wait, 0.001)  # never spin on float rounding
            if waited + wait > self.max_wait_s:
                return wait
            await self._sleep(wait)
            waited += wait

    async def _refill(self, key: str, limit: RateLimit) -> float:
        """Take this key's waiting sends' tokens from the store: 0.0 when some were taken
        (one spent by the caller, the rest leased), else the wait the store gave."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._refills[key] = done
        try:
            now = self._clock()
            most = min(self.lease_max, max(self._asking[key], self._recently_spent(key, now)))
            taken, wait = await self.store.take(
                key, rate=limit.rate, burst=limit.burst, now=now, most=most
            )
        finally:
            del self._refills[key]
            done.set_result(None)
        answered = self._clock()  # a slow store must not eat the lease
        if taken:
            self._leases.put(key, (taken - 1, answered + self.lease_s))
            return 0.0
        self._dry.put(key, now + wait)
        return wait


class Deliverer:
    """A gateway (or `Router`) wrapped in breaker, rate limit and retry policy."""

    def __init__(
        self,
        sender: RoutedSender,
        *,
        breaker: CircuitBreaker | None = None,
        limiter: RateLimiter | None = None,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.sender = sender
        self.breaker = breaker or CircuitBreaker()
        self.limiter = limiter
        self.retry = retry or RetryPolicy()
        self._rng = rng

    def route_key(self, message: Message) -> str:
        return self.sender.route_key(message)

    async def send(self, message: Message, attempt: int = 0) -> DeliveryResult:
        """One attempt (0-based `attempt`) under the policy; see the module docstring."""
        channel = str(message.device.channel)
        key = self.sender.route_key(message)
        wait, probe = await self.breaker.before(key)
        if wait > 0:
            result = DeliveryResult.retry(
                message.id, channel, f"{channel}:breaker_open", retry_after=wait
            )
            return self.retry.decide(result, attempt, self._rng)
        if self.limiter is not None:
            wait = await self.limiter.acquire(message.device.channel, key)
            if wait > 0:
                result = DeliveryResult.retry(
                    message.id, channel, f"{channel}:rate_limited", retry_after=wait
                )
                return self.retry.decide(result, attempt, self._rng)
        result = await send_one(self.sender, message)
        await self.breaker.after(key, result, probe=probe)
        return self.retry.decide(result, attempt, self._rng)

    async def send_until_settled(
        self,
        message: Message,
        *,
        max_wait_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> tuple[DeliveryResult, int]:
        """Retry in-process while the total wait stays under `max_wait_s` (the CLI and
        tests; the worker re-queues instead). Returns the last result and attempts made."""
        waited = 0.0
        attempt = 0
        while True:
            result = await self.send(message, attempt)
            attempt += 1
            if not result.retryable or result.retry_after is None:
                return result, attempt
            if waited + result.retry_after > max_wait_s:
                return result, attempt
            await sleep(result.retry_after)
            waited += result.retry_after
