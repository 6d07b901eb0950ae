"""How long each gateway took to answer, measured around the gateways themselves.

The `Deliverer` wraps a `RoutedSender` in its breaker, rate limit and retry policy;
putting `TimedSender` between them times the gateway calls only: an open breaker or an
exhausted rate limit answers without a request and is not a latency.
"""

from __future__ import annotations

import time

from push import DeliveryResult, Message, RoutedSender


class TimedSender:
    """A `RoutedSender` that notes (channel, seconds) for every call to `inner`; the
    owner takes them with `take()`. Used from one thread's event loop only."""

    def __init__(self, inner: RoutedSender) -> None:
        self._inner = inner
        self._observed: list[tuple[str, float]] = []

    def route_key(self, message: Message) -> str:
        return self._inner.route_key(message)

    async def send(self, message: Message) -> DeliveryResult:
        start = time.perf_counter()
        try:
            return await self._inner.send(message)
        finally:
            self._observed.append((str(message.device.channel), time.perf_counter() - start))

    def take(self) -> list[tuple[str, float]]:
        """The observations since the last `take`."""
        observed, self._observed = self._observed, []
        return observed
