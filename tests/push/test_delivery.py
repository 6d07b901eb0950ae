"""Delivery policy: retry schedule, circuit breaker, rate limit (fake gateway, fake clock)
and one end-to-end retry against the local FCM server."""

from __future__ import annotations

import asyncio
import random

import pytest

from push.delivery import CircuitBreaker, Deliverer, RateLimit, RateLimiter, RetryPolicy
from push.fake import RecordingGateway
from push.gateway import send_many
from push.gateways.fcm import FcmGateway
from push.gateways.google_oauth import ServiceAccountTokens
from push.http import make_h1_client
from push.messages import Channel
from push.result import DeliveryResult, Outcome
from push.stores import MemoryBreakerStore, MemoryRateLimitStore
from push.testing import FcmServer, Scripted
from tests.push.helpers import fcm_token, message


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _msg():  # type: ignore[no-untyped-def]
    return message(Channel.FCM, fcm_token())


def test_retry_after_is_honoured_and_capped() -> None:
    policy = RetryPolicy(max_retry_after_s=100)
    result = DeliveryResult.retry("m", "fcm", "fcm:QUOTA_EXCEEDED", retry_after=30, status=429)
    assert policy.decide(result, 0).retry_after == 30
    long = DeliveryResult.retry("m", "fcm", "x", retry_after=10_000, status=429)
    assert policy.decide(long, 0).retry_after == 100


def test_backoff_is_full_jitter_below_the_capped_bound() -> None:
    policy = RetryPolicy(base_s=2, cap_s=60)
    rng = random.Random(7)
    for attempt, bound in [(0, 2), (1, 4), (3, 16), (10, 60)]:
        delays = [policy.backoff(attempt, rng) for _ in range(200)]
        assert all(0 <= d <= bound for d in delays)
        assert max(delays) > bound * 0.8  # spread over the whole range


def test_retries_are_finite() -> None:
    policy = RetryPolicy(max_attempts=3)
    result = DeliveryResult.retry("m", "fcm", "fcm:UNAVAILABLE", status=503)
    assert policy.decide(result, 1).outcome is Outcome.RETRY
    final = policy.decide(result, 2)
    assert final.outcome is Outcome.FAILED
    assert final.reason == "retries_exhausted:fcm:UNAVAILABLE"


def test_permanent_results_are_never_retried() -> None:
    policy = RetryPolicy()
    for result in (
        DeliveryResult.failed("m", "fcm", "fcm:INVALID_ARGUMENT"),
        DeliveryResult.device_invalid("m", "fcm", "fcm:UNREGISTERED"),
    ):
        assert policy.decide(result, 0) == result


def test_burst_of_5xx_opens_breaker_then_probe_closes_it() -> None:
    clock = Clock()
    gateway = RecordingGateway(latency_s=0.01)
    deliverer = Deliverer(
        gateway, breaker=CircuitBreaker(failure_threshold=3, open_s=30, clock=clock)
    )

    async def go() -> None:
        gateway.script(Outcome.RETRY, Outcome.RETRY, Outcome.RETRY)
        for _ in range(3):
            assert (await deliverer.send(_msg())).reason == "fcm:fake_unavailable"
        blocked = await deliverer.send(_msg())
        assert blocked.reason == "fcm:breaker_open"
        assert blocked.retry_after == pytest.approx(30)
        assert len(gateway.sent) == 3  # no request while open
        clock.now += 31
        probe, other = await asyncio.gather(deliverer.send(_msg()), deliverer.send(_msg()))
        assert probe.delivered
        assert other.reason == "fcm:breaker_open"  # only one half-open probe
        assert (await deliverer.send(_msg())).delivered  # closed again

    asyncio.run(go())


class CountingBreakerStore(MemoryBreakerStore):
    """Counts the reads of a breaker's state, each taking a moment (a network store)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def open_until(self, key: str) -> float:
        self.reads += 1
        await asyncio.sleep(0.01)
        return await super().open_until(key)


def test_the_concurrent_sends_of_a_batch_read_the_breaker_once() -> None:
    clock = Clock()
    store = CountingBreakerStore()
    breaker = CircuitBreaker(store, clock=clock)

    async def go() -> None:
        answers = await asyncio.gather(*(breaker.before("fcm:p") for _ in range(50)))
        assert answers == [(0.0, False)] * 50
        assert store.reads == 1
        clock.now += breaker.closed_recheck_s + 1  # past the cache: read again, once
        await store.trip("fcm:p", clock.now + 30)
        answers = await asyncio.gather(*(breaker.before("fcm:p") for _ in range(50)))
        assert store.reads == 2
        assert answers == [(30.0, False)] * 50

    asyncio.run(go())


def test_failed_probe_reopens_the_breaker() -> None:
    clock = Clock()
    gateway = RecordingGateway()
    breaker = CircuitBreaker(failure_threshold=1, open_s=10, clock=clock)
    deliverer = Deliverer(gateway, breaker=breaker)

    async def go() -> None:
        gateway.script(Outcome.RETRY, Outcome.RETRY)
        await deliverer.send(_msg())
        clock.now += 11
        assert (await deliverer.send(_msg())).reason == "fcm:fake_unavailable"  # the probe
        assert (await deliverer.send(_msg())).reason == "fcm:breaker_open"

    asyncio.run(go())


def test_credentials_failure_opens_breaker_at_once() -> None:
    clock = Clock()
    gateway = RecordingGateway()
    deliverer = Deliverer(gateway, breaker=CircuitBreaker(auth_open_s=300, clock=clock))

    async def go() -> None:
        gateway.script(Outcome.CREDENTIALS)
        assert (await deliverer.send(_msg())).outcome is Outcome.CREDENTIALS
        blocked = await deliverer.send(_msg())
        assert blocked.reason == "fcm:breaker_open" and blocked.retry_after == pytest.approx(300)

    asyncio.run(go())


def test_rate_limit_lets_a_burst_through_then_defers() -> None:
    clock = Clock()
    limiter = RateLimiter({Channel.FCM: RateLimit(rate=2, burst=3)}, max_wait_s=0, clock=clock)
    gateway = RecordingGateway()
    deliverer = Deliverer(gateway, limiter=limiter)

    async def go() -> None:
        results = [await deliverer.send(_msg()) for _ in range(4)]
        assert [r.delivered for r in results] == [True, True, True, False]
        assert results[3].reason == "fcm:rate_limited"
        assert results[3].retry_after == pytest.approx(0.5)
        clock.now += 0.5
        assert (await deliverer.send(_msg())).delivered

    asyncio.run(go())


def test_rate_limit_waits_briefly_in_process() -> None:
    clock = Clock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    limiter = RateLimiter(
        {Channel.FCM: RateLimit(rate=10, burst=1)}, max_wait_s=1, clock=clock, sleep=sleep
    )

    async def go() -> list[float]:
        return [await limiter.acquire(Channel.FCM, "k") for _ in range(3)]

    assert asyncio.run(go()) == [0.0, 0.0, 0.0]
    assert slept == [pytest.approx(0.1), pytest.approx(0.1)]


def test_send_many_keeps_order_and_isolates_failures() -> None:
    gateway = RecordingGateway()
    gateway.script(Outcome.DELIVERED, Outcome.FAILED, Outcome.DELIVERED)
    messages = [_msg() for _ in range(50)]
    results = asyncio.run(send_many(Deliverer(gateway), messages, concurrency=8))
    assert [r.message_id for r in results] == [m.id for m in messages]
    assert sum(not r.delivered for r in results) == 1


def test_send_until_settled_retries_inline() -> None:
    gateway = RecordingGateway()
    gateway.script(
        lambda m: DeliveryResult.retry(m.id, "fcm", "fcm:UNAVAILABLE", retry_after=0.0, status=503)
    )
    result, attempts = asyncio.run(Deliverer(gateway).send_until_settled(_msg()))
    assert result.delivered and attempts == 2


def test_fcm_permission_denied_opens_the_breaker_end_to_end(fcm: FcmServer) -> None:
    async def go() -> list[DeliveryResult]:
        tokens = ServiceAccountTokens(fcm.service_account())
        async with make_h1_client() as client:
            gateway = FcmGateway(client, tokens, project_id="not-ours", base_url=fcm.base_url)
            deliverer = Deliverer(gateway)
            return [await deliverer.send(_msg()) for _ in range(3)]

    first, second, third = asyncio.run(go())
    assert first.outcome is Outcome.CREDENTIALS
    assert second.reason == third.reason == "fcm:breaker_open"
    assert len([r for r in fcm.received if r["kind"] != "token"]) == 0  # 403s are not recorded


def test_503_then_200_through_the_policy_end_to_end(fcm: FcmServer) -> None:
    token = fcm_token()
    fcm.script.push(Scripted(503, retry_after="0"), key=token)

    async def go() -> tuple[DeliveryResult, int]:
        tokens = ServiceAccountTokens(fcm.service_account())
        async with make_h1_client() as client:
            deliverer = Deliverer(FcmGateway(client, tokens, base_url=fcm.base_url))
            return await deliverer.send_until_settled(message(Channel.FCM, token))

    result, attempts = asyncio.run(go())
    assert result.delivered and attempts == 2


def test_an_unexpected_error_fails_one_message_not_the_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def boom(message: object) -> DeliveryResult:
        raise RuntimeError("bug")

    gateway = RecordingGateway()
    gateway.script(Outcome.DELIVERED, boom, Outcome.DELIVERED)
    results = asyncio.run(send_many(gateway, [_msg() for _ in range(3)], concurrency=1))
    assert [r.outcome for r in results] == [Outcome.DELIVERED, Outcome.FAILED, Outcome.DELIVERED]
    assert results[1].reason == "fcm:internal:RuntimeError"
    assert "unexpected error" in caplog.text


def test_results_round_trip_through_json() -> None:
    import datetime as dt
    import json

    result = DeliveryResult.device_invalid(
        "m1",
        "apns",
        "apns:Unregistered",
        invalid_since=dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
        status=410,
    )
    assert DeliveryResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


class _CountingStore(MemoryRateLimitStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def take(
        self, key: str, *, rate: float, burst: float, now: float, most: int = 1
    ) -> tuple[int, float]:
        self.calls += 1
        await asyncio.sleep(0)  # a real store answers later: the other sends queue up
        return await super().take(key, rate=rate, burst=burst, now=now, most=most)


def test_sends_waiting_at_once_share_one_lease_and_never_overspend() -> None:
    clock = Clock()
    store = _CountingStore()
    limiter = RateLimiter(
        {Channel.FCM: RateLimit(rate=1, burst=40)}, store, max_wait_s=0, clock=clock
    )

    async def go() -> list[float]:
        return list(await asyncio.gather(*(limiter.acquire(Channel.FCM, "k") for _ in range(100))))

    waits = asyncio.run(go())
    assert waits.count(0.0) == 40  # the bucket's 40 tokens, not one more
    assert store.calls < 10  # not one store call per send


def test_a_send_cancelled_while_waiting_for_tokens_leaves_the_others_alone() -> None:
    store = _CountingStore()
    limiter = RateLimiter({Channel.FCM: RateLimit(rate=1, burst=10)}, store, max_wait_s=0)

    async def go() -> list[object]:
        sends = [asyncio.ensure_future(limiter.acquire(Channel.FCM, "k")) for _ in range(3)]
        await asyncio.sleep(0)  # the first asks the store, the others wait on it
        sends[1].cancel()
        return await asyncio.gather(*sends, return_exceptions=True)

    first, cancelled, third = asyncio.run(go())
    assert first == 0.0 and third == 0.0
    assert isinstance(cancelled, asyncio.CancelledError)


def _stream(limiter: RateLimiter, clock: Clock, sends: int, every_s: float) -> list[float]:
    """One send at a time, `every_s` apart: the single events of a steady shop."""

    async def go() -> list[float]:
        waits = []
        for _ in range(sends):
            waits.append(await limiter.acquire(Channel.FCM, "k"))
            clock.now += every_s
        return waits

    return asyncio.run(go())


def test_a_steady_stream_of_single_sends_leases_tokens_ahead() -> None:
    clock = Clock()
    store = _CountingStore()
    limiter = RateLimiter(
        {Channel.FCM: RateLimit(rate=1000, burst=1000)}, store, max_wait_s=0, clock=clock
    )
    waits = _stream(limiter, clock, sends=200, every_s=0.01)  # 100/s for 2 s
    assert waits == [0.0] * 200
    # a store call per lease (0.25 s: 25 sends) once ramped up, not one per send
    assert store.calls <= 20


def test_leased_tokens_left_unspent_are_bounded_by_the_recent_sends() -> None:
    clock = Clock()
    store = MemoryRateLimitStore()
    limiter = RateLimiter(
        {Channel.FCM: RateLimit(rate=1e-9, burst=1000)}, store, max_wait_s=0, clock=clock
    )
    _stream(limiter, clock, sends=200, every_s=0.01)
    tokens, _ = store._buckets["k"]
    taken = 1000 - round(tokens)
    assert 200 <= taken <= 200 + 50  # at most the last two leases' sends (0.5 s at 100/s)


def test_leasing_ahead_never_lets_more_through_than_the_limit() -> None:
    clock = Clock()
    limiter = RateLimiter(
        {Channel.FCM: RateLimit(rate=100, burst=10)},
        MemoryRateLimitStore(),
        max_wait_s=0,
        clock=clock,
    )
    waits = _stream(limiter, clock, sends=400, every_s=0.005)  # 200/s for 2 s
    assert waits.count(0.0) <= 10 + 100 * 2 + 1
    assert waits.count(0.0) >= 100 * 2 * 0.8  # and leases lose little of it
