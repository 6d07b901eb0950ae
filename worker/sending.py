"""The push worker: deliver a queued message to every active device of its shopper.

`Sender.deliver` is what the `pushrec.deliver` task does. At send time it checks again
what may have changed since the rule fired (consent withdrawn, items bought or sold out,
a cap reached by another message: the caps are recorded atomically here), then sends to
each active, consented device in the rule's channel order through `push/`, under the
circuit breaker, rate limit and retry policy whose state lives in Redis. Each device's
result is acted on: delivered; retry later (parked in the delayed set, never held by a
worker); device invalid (deactivated, for APNs only if not re-registered since the
gateway's timestamp); failed. Every attempt is recorded on the message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis

from push import DeliveryResult, Device, Message, Outcome, Purpose, WebPushSubscription
from push.config import GatewayConfig, open_gateways
from push.delivery import CircuitBreaker, Deliverer, RateLimit, RateLimiter, RetryPolicy
from push.messages import Channel, Priority
from worker.audit import Audit
from worker.contacts import Contacts, parse_devices, parse_preferences
from worker.contract import DELIVER
from worker.delayed import DelayedJobs, Job
from worker.firing import ITEM_KINDS
from worker.keys import Keys
from worker.outbox import MessageRecord, Outbox
from worker.policy import ContactPolicy
from worker.redis_stores import RedisBreakerStore, RedisRateLimitStore, RedisTokenCache
from worker.rules import enabled_rule
from worker.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


class PushRuntime:
    """One event loop per worker process, the gateways over one HTTP/2 client, and a
    `Deliverer` whose breaker, rate limit and APNs provider tokens are shared in Redis."""

    def __init__(self, settings: Settings, config: GatewayConfig) -> None:
        assert settings.redis_url is not None
        self.loop = asyncio.new_event_loop()
        self._stack = AsyncExitStack()
        self._redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        prefix = settings.key_prefix
        router = self.run(
            self._stack.enter_async_context(
                open_gateways(config, token_cache=RedisTokenCache(self._redis, prefix))
            )
        )
        limit = RateLimit(rate=settings.push_rate_per_s, burst=settings.push_rate_burst)
        self.deliverer = Deliverer(
            router,
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


def _push_device(record: dict[str, Any]) -> Device:
    channel = Channel(record["channel"])
    if channel is Channel.WEBPUSH:
        return Device(channel, subscription=WebPushSubscription.from_json(record["subscription"]))
    return Device(channel, token=record["token"])


class Sender:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        settings: Settings,
        contacts: Contacts,
        policy: ContactPolicy,
        outbox: Outbox,
        audit: Audit,
        delayed: DelayedJobs,
        push: PushRuntime,
    ) -> None:
        self._client = client
        self._keys = keys
        self._settings = settings
        self._contacts = contacts
        self._policy = policy
        self._outbox = outbox
        self._audit = audit
        self._delayed = delayed
        self._push = push

    def deliver(
        self,
        mid: str,
        now: float,
        attempt: int = 0,
        only: list[str] | None = None,
        owner: str = "",
    ) -> dict[str, Any]:
        """Send message `mid`; `owner` (the task id) claims each device send atomically."""
        record, state = self._outbox.load(mid)
        if record is None:
            return {"action": "missing", "message_id": mid}
        if state.get("state") in {"sent", "suppressed", "failed"} and only is None:
            return {"action": "settled", "message_id": mid}
        targets, why_not = self._recheck(record, now, attempt)
        if why_not:
            self._outbox.set_state(mid, "suppressed", why_not)
            self._audit.count(record.rule, "suppressed")
            self._outbox.add_attempt(mid, {"at": now, "attempt": attempt, "suppressed": why_not})
            return {"action": "suppressed", "reason": why_not}
        if only is not None:
            targets = {d: r for d, r in targets.items() if d in only}

        sends = [
            (device_id, self._message(record, device))
            for device_id, device in targets.items()
            if self._outbox.claim_device(mid, device_id, owner or f"local-{id(self):x}", now)
        ]
        results = self._push.run(self._send_all([m for _, m in sends], attempt))
        return self._settle(record, sends, results, attempt, now)

    async def _send_all(self, messages: list[Message], attempt: int) -> list[DeliveryResult]:
        return list(
            await asyncio.gather(*(self._push.deliverer.send(m, attempt) for m in messages))
        )

    def _recheck(
        self, record: MessageRecord, now: float, attempt: int
    ) -> tuple[dict[str, dict[str, Any]], str]:
        """Devices to send to, or why the message must not go out any more."""
        rule = enabled_rule(self._settings.rules, record.rule)
        if rule is None:
            return {}, f"rule {record.rule} disabled"
        k = self._keys.user(record.user_id)
        pipe = self._client.pipeline(transaction=False)  # every read, one round trip
        pipe.hgetall(k.devices)
        pipe.hgetall(k.preferences)
        pipe.zrangebyscore(k.purchased, record.created_at, "+inf")
        for item in record.items:
            pipe.hget(self._keys.item(item).item, "stock")
        raw_devices, raw_prefs, bought, *stock = pipe.execute()
        devices = {d: r for d, r in parse_devices(raw_devices).items() if r.get("active", True)}
        channels = self._policy.consented_channels(
            rule, [r["channel"] for r in devices.values()], parse_preferences(raw_prefs)
        )
        if not channels:
            return {}, "consent withdrawn or no active device"
        bought_since = set(bought)
        left = [i for i in record.items if i not in bought_since]
        if not left or (rule.kind in ITEM_KINDS and record.items[0] in bought_since):
            return {}, "bought in the meantime"
        in_stock = dict(zip(record.items, stock, strict=True))
        if all(in_stock[i] == "0" for i in left):
            return {}, "out of stock"
        if attempt == 0:
            limit = self._policy.reserve(rule, record.user_id, record.id, now)
            if limit not in {"ok", "already"}:
                return {}, f"cap reached at send time: {limit}"
        order = {c: n for n, c in enumerate(rule.channels)}
        ranked = sorted(
            ((d, r) for d, r in devices.items() if r["channel"] in channels),
            key=lambda kv: (order[kv[1]["channel"]], kv[0]),
        )
        return dict(ranked), ""

    def _message(self, record: MessageRecord, device: dict[str, Any]) -> Message:
        return Message(
            id=record.id,
            device=_push_device(device),
            title=record.title,
            body=record.body,
            image=record.image,
            link=record.link,
            data=record.data,
            coupon=record.coupon,
            locale=record.locale,
            purpose=Purpose(record.purpose),
            ttl=record.ttl_s,
            priority=Priority.HIGH if record.purpose == "transactional" else Priority.NORMAL,
        )

    def _settle(
        self,
        record: MessageRecord,
        sends: list[tuple[str, Message]],
        results: list[DeliveryResult],
        attempt: int,
        now: float,
    ) -> dict[str, Any]:
        mid = record.id
        # Whether an earlier attempt already delivered (to another device): count once.
        was_sent = self._outbox.state(mid).get("state") == "sent"
        retry: list[str] = []
        retry_after = 0.0
        delivered = 0
        for (device_id, _), result in zip(sends, results, strict=True):
            self._outbox.add_attempt(
                mid, {"at": now, "attempt": attempt, "device_id": device_id, **result.to_dict()}
            )
            if result.outcome is Outcome.DELIVERED:
                delivered += 1
                self._outbox.settle_device(mid, device_id, "sent")
            elif (
                result.outcome in {Outcome.RETRY, Outcome.CREDENTIALS}
                and result.retry_after is not None
            ):
                retry.append(device_id)
                retry_after = max(retry_after, result.retry_after)
                self._outbox.settle_device(mid, device_id, "retry")
            elif result.outcome is Outcome.DEVICE_INVALID:
                since = result.invalid_since.timestamp() if result.invalid_since else None
                self._contacts.deactivate(record.user_id, device_id, since, result.reason)
                self._outbox.settle_device(mid, device_id, "invalid")
            else:
                self._outbox.settle_device(mid, device_id, "failed")
        if delivered:
            if not was_sent:
                self._audit.count(record.rule, "delivered")
                self._policy.record_items(record.user_id, record.items, now)
            self._outbox.set_state(mid, "sent")
        if retry:
            job = Job(
                f"deliver:{mid}",
                DELIVER,
                {"message_id": mid, "attempt": attempt + 1, "devices": retry},
            )
            self._delayed.schedule(job, now + retry_after)
            if not delivered:
                self._outbox.set_state(mid, "retrying")
        elif not delivered and not was_sent:
            self._outbox.set_state(mid, "failed", "no device took it")
            self._audit.count(record.rule, "failed")
        return {
            "action": "sent" if delivered else ("retrying" if retry else "failed"),
            "message_id": mid,
            "delivered": delivered,
            "retry_devices": len(retry),
            "retry_after": retry_after if retry else None,
        }
