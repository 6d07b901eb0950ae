"""The worker's Redis broker transport: kombu's, with a message it cannot read recorded
and dropped instead of ending the worker.

kombu pops a message off a queue's list (BRPOP) and decodes it in the worker's consumer
(the main process), before Celery sees it: the envelope's JSON, its `properties`, the
body's base64. An envelope that does not decode (not JSON, not an object, no
`properties`, a body that is not base64, an unknown `body_encoding`, JSON nested past
the interpreter's recursion limit) raised there, outside any handler,
and ended the worker; the message, popped but not yet among the unacked, was lost with
no record. Here the consumer records it (`Transport.on_unreadable`, set by
`consumer.py`) and goes on. A message that decodes is Celery's, with a delivery tag
and a route of its own (`_own_delivery`).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from typing import Any, cast

from kombu.transport import redis as kombu_redis

from worker.service.receipt import SHAPE_ERRORS

log = logging.getLogger(__name__)

# (the error, the envelope's text when the error carries it)
OnUnreadable = Callable[[BaseException, str | None], None]


class Channel(kombu_redis.Channel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handlers = {**self.handlers, "BRPOP": self._read_or_drop}

    def _read_or_drop(self, **options: Any) -> bool:
        """kombu's BRPOP read, with a message it cannot read handed to the transport's
        `on_unreadable` and dropped: popped and not decoded, nothing is left of it; taken
        as unacked before reading it failed further on, it is acked, not to come back
        and fail again."""
        transport = cast(Transport, self.connection)
        transport.taking = None
        try:
            return bool(self._brpop_read(**options))  # type: ignore[attr-defined]
        except SHAPE_ERRORS as exc:
            if (tag := transport.taking) is not None and tag in self.qos._delivered:
                self.basic_ack(tag)
            text = exc.doc if isinstance(exc, json.JSONDecodeError) else None
            transport.unreadable(exc, text)
            return True


class Transport(kombu_redis.Transport):
    """`broker_transport` of a worker whose broker is Redis (`celery_config`)."""

    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_unreadable: OnUnreadable | None = None
        self.taking: str | None = None  # the delivery tag of the message being read

    def _deliver(self, message: Any, queue: str | None) -> None:
        # a broadcast (pub/sub: remote control) is not a list's message: kombu's as it is
        if queue and not any(queue in _fanout_queues(c) for c in self.channels or ()):
            self.taking = _own_delivery(message, queue)
        super()._deliver(message, queue)

    def unreadable(self, exc: BaseException, text: str | None) -> None:
        log.error("a broker message that is not a readable envelope: dropped", exc_info=exc)
        if self.on_unreadable is not None:
            self.on_unreadable(exc, text)


def _fanout_queues(channel: Any) -> set[str]:
    """The queues `channel` consumes from a fanout exchange (kombu's Redis channel's)."""
    return set(getattr(channel, "active_fanout_queues", ()))


def _own_delivery(message: Any, queue: str) -> str | None:
    """Give a popped message a delivery tag of its own and, as its route, the queue it
    was popped from. kombu keeps an unacked message under the envelope's tag and puts it
    back by the envelope's route when its worker dies; a producer writing the envelope
    by hand can give two messages one tag (the first ack then unprotects the other) or
    a route to no queue (the restored message goes nowhere). A message that is not an
    envelope is left as it is: reading it fails, and the channel records it. Returns the
    tag given, if any."""
    properties = message.get("properties") if isinstance(message, dict) else None
    if not isinstance(properties, dict):
        return None
    info = properties.get("delivery_info")
    info = dict(info) if isinstance(info, dict) else {}
    info.update(exchange="", routing_key=queue)  # the default exchange: straight to `queue`
    properties["delivery_info"] = info
    properties["delivery_tag"] = tag = uuid.uuid4().hex
    return tag
