"""The gateway seam: `send(message) -> DeliveryResult`, and helpers built on it.

A gateway never raises for a gateway answer or a network failure: it returns a
`DeliveryResult`. It raises `CompositionError` subclasses only when the message itself
cannot be built (template, size, malformed field) — which `send_many` and `Router`
turn into `failed` results so one bad message never sinks a batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from push.errors import CompositionError, UnsafeDestinationError
from push.messages import Channel, Message
from push.redact import fingerprint
from push.result import DeliveryResult

__all__ = ["Gateway", "RoutedSender", "Router", "Sender", "send_many", "send_one"]

log = logging.getLogger("push.gateway")


@runtime_checkable
class Gateway(Protocol):
    """One outside push service.

    `channel` names it; `credential_key` identifies the credential it sends with (a
    fingerprint, safe to use in store keys and logs). `route_key(message)` is the key of
    the breaker and rate limit a message counts against: the credential for FCM, APNs and
    Web Push, the receiving host for webhooks.
    """

    @property
    def channel(self) -> Channel: ...

    @property
    def credential_key(self) -> str: ...

    def route_key(self, message: Message) -> str:
        """Key of the breaker and rate limit this message counts against (no secrets)."""
        ...

    async def send(self, message: Message) -> DeliveryResult: ...


class Sender(Protocol):
    """Anything that sends one message: a `Gateway`, a `Router`, a `Deliverer`."""

    async def send(self, message: Message) -> DeliveryResult: ...


class RoutedSender(Sender, Protocol):
    """A `Sender` that also names the breaker/rate-limit key of a message."""

    def route_key(self, message: Message) -> str: ...


async def send_one(gateway: Sender, message: Message) -> DeliveryResult:
    """`gateway.send(message)`, with composition errors turned into `failed` results."""
    try:
        return await gateway.send(message)
    except (CompositionError, UnsafeDestinationError) as exc:
        log.warning(
            "message %s not sendable on %s: %s",
            message.id,
            message.device.channel,
            type(exc).__name__,
        )
        reason = f"{message.device.channel}:{type(exc).__name__}"
        return DeliveryResult.failed(message.id, str(message.device.channel), reason)


class Router:
    """A gateway per channel behind one `send`; messages go by `message.device.channel`."""

    def __init__(self, gateways: Mapping[Channel, Gateway] | Iterable[Gateway]) -> None:
        items = gateways.values() if isinstance(gateways, Mapping) else gateways
        self._gateways: dict[Channel, Gateway] = {g.channel: g for g in items}

    @property
    def channels(self) -> frozenset[Channel]:
        return frozenset(self._gateways)

    def gateway(self, channel: Channel) -> Gateway:
        return self._gateways[channel]

    def route_key(self, message: Message) -> str:
        gateway = self._gateways.get(message.device.channel)
        return gateway.route_key(message) if gateway else f"{message.device.channel}:none"

    async def send(self, message: Message) -> DeliveryResult:
        channel = message.device.channel
        gateway = self._gateways.get(channel)
        if gateway is None:
            log.error("no gateway configured for %s (device %s)", channel, _device_fp(message))
            return DeliveryResult.failed(message.id, str(channel), f"{channel}:not_configured")
        return await send_one(gateway, message)


async def send_many(
    sender: Sender, messages: Sequence[Message], concurrency: int = 64
) -> list[DeliveryResult]:
    """Send all `messages` with at most `concurrency` in flight; results in input order.

    `sender` is a `Gateway`, a `Router` or a `push.delivery.Deliverer`. Composition
    errors become `failed` results; so does any unexpected exception (logged with its
    traceback, reason ``<channel>:internal:<type>``): one message never sinks the batch.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    results: list[DeliveryResult | None] = [None] * len(messages)
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(messages):
            index = next_index
            next_index += 1
            message = messages[index]
            try:
                results[index] = await sender.send(message)
            except (CompositionError, UnsafeDestinationError) as exc:
                reason = f"{message.device.channel}:{type(exc).__name__}"
                results[index] = DeliveryResult.failed(
                    message.id, str(message.device.channel), reason
                )
            except Exception as exc:  # a bug must not sink the other messages of the batch
                log.exception("unexpected error sending message %s", message.id)
                reason = f"{message.device.channel}:internal:{type(exc).__name__}"
                results[index] = DeliveryResult.failed(
                    message.id, str(message.device.channel), reason
                )

    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, len(messages))):
            group.create_task(worker())
    return [r for r in results if r is not None]


def _device_fp(message: Message) -> str:
    return fingerprint(message.device.address)
