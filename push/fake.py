"""`RecordingGateway`: the fake for the gateway seam, shipped beside the real ones.

It records every message and answers from a script (or ``delivered``), so the worker's
tests run without servers. It honours the same contract as the HTTP gateways (see
tests/push/test_gateway_contract.py, which runs against both).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable

from push.messages import Channel, Message
from push.redact import fingerprint
from push.result import DeliveryResult, Outcome

__all__ = ["RecordingGateway"]

_Answer = Outcome | Callable[[Message], DeliveryResult]


class RecordingGateway:
    """Delivers (records) everything unless told otherwise.

    `script(*answers)` queues answers for the next sends: an `Outcome` (a plain result of
    that kind) or a callable ``message -> DeliveryResult``. `invalid_tokens` are answered
    with ``device_invalid``. `latency_s` makes each send take that long.
    """

    def __init__(
        self, channel: Channel = Channel.FCM, *, name: str = "fake", latency_s: float = 0.0
    ) -> None:
        self.channel = channel
        self.latency_s = latency_s
        self.credential_key = f"{channel}:{fingerprint(name)}"
        self.sent: list[Message] = []
        self.invalid_tokens: set[str] = set()
        self._answers: deque[_Answer] = deque()
        self._ids = itertools.count(1)

    def route_key(self, message: Message) -> str:
        return self.credential_key

    def script(self, *answers: _Answer) -> None:
        self._answers.extend(answers)

    async def send(self, message: Message) -> DeliveryResult:
        self.sent.append(message)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        mid, ch = message.id, str(self.channel)
        if message.device.address in self.invalid_tokens:
            return DeliveryResult.device_invalid(mid, ch, f"{ch}:fake_unregistered", status=410)
        answer = self._answers.popleft() if self._answers else Outcome.DELIVERED
        if callable(answer) and not isinstance(answer, Outcome):
            return answer(message)
        if answer is Outcome.DELIVERED:
            return DeliveryResult.ok(mid, ch, f"fake-{next(self._ids)}")
        if answer is Outcome.RETRY:
            return DeliveryResult.retry(mid, ch, f"{ch}:fake_unavailable", status=503)
        if answer is Outcome.DEVICE_INVALID:
            return DeliveryResult.device_invalid(mid, ch, f"{ch}:fake_unregistered", status=410)
        if answer is Outcome.CREDENTIALS:
            return DeliveryResult.credentials(mid, ch, f"{ch}:fake_auth", status=401)
        return DeliveryResult.failed(mid, ch, f"{ch}:fake_rejected", status=400)
