"""The worker's Redis transport keeps each popped message under a tag and a route of its
own (`worker/service/broker.py`), whatever the producer wrote in the envelope."""

from __future__ import annotations

import base64
import json
from typing import Any

import redis
from kombu import Connection, Consumer, Queue

from worker.settings import Settings


def _envelope(event_id: str, queue: str, tag: str, delivery_info: Any) -> str:
    body = json.dumps([[], {"event": {"event_id": event_id}}, {}])
    return json.dumps({
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "js", "task": "pushrec.track", "id": event_id},
        "properties": {"body_encoding": "base64", "delivery_tag": tag,
                       "delivery_info": delivery_info, "priority": 0},
    })  # fmt: skip


def test_messages_a_dead_consumer_held_come_back_to_their_queue_whatever_their_envelope(
    settings: Settings,
) -> None:
    """Two messages with one tag, one routed to an exchange that does not exist, one to a
    key no queue has, one with no route: all taken and never acked, all back in the
    queue they came from once the channel closes (kombu restores a closing consumer's
    unacked messages as it restores a killed worker's after the visibility timeout: by
    the route and tag kept with them). With kombu's transport as it is, the
    shared tag kept one of the first two and the routes sent the others nowhere."""
    prefix, name = f"{settings.key_prefix}-broker:", "q-activity"
    envelopes = [
        _envelope("same-1", name, "tag-1", {"exchange": "", "routing_key": name}),
        _envelope("same-2", name, "tag-1", {"exchange": "", "routing_key": name}),
        _envelope("no-exchange", name, "tag-2", {"exchange": "nowhere", "routing_key": name}),
        _envelope("no-key", name, "tag-3", {"exchange": "", "routing_key": "q-nowhere"}),
        _envelope("no-route", name, "tag-4", None),
    ]
    redis_client = redis.Redis.from_url(settings.redis_url)
    for raw in envelopes:
        redis_client.lpush(f"{prefix}{name}", raw)
    options = {"global_keyprefix": prefix}
    with Connection(
        settings.redis_url, transport="worker.service.broker:Transport", transport_options=options
    ) as connection:
        taken: list[Any] = []
        queue = Queue(name, routing_key=name)
        with Consumer(connection, [queue], callbacks=[lambda _, m: taken.append(m)]):
            while len(taken) < len(envelopes):
                connection.drain_events(timeout=5)
        assert len({m.delivery_tag for m in taken}) == len(envelopes)
    back = [
        json.loads(raw)["headers"]["id"] for raw in redis_client.lrange(f"{prefix}{name}", 0, -1)
    ]
    assert sorted(back) == ["no-exchange", "no-key", "no-route", "same-1", "same-2"]
    assert redis_client.llen(f"{prefix}q-nowhere") == 0
    redis_client.delete(*redis_client.keys(f"{prefix}*"))
    redis_client.close()


def test_a_message_that_fails_after_it_was_taken_is_recorded_acked_and_not_restored(
    settings: Settings,
) -> None:
    """Reading fails past kombu's decoding (here the consumer's callback raises, as Celery's
    reading of a message could): the message was already among the unacked, and is acked
    with the record, so it does not come back to fail again."""
    prefix, name = f"{settings.key_prefix}-broker-acked:", "q-activity"
    redis_client = redis.Redis.from_url(settings.redis_url)
    redis_client.lpush(f"{prefix}{name}", _envelope("fails", name, "tag", None))
    seen: list[tuple[BaseException, Any]] = []

    def fail(_: Any, message: Any) -> None:
        raise ValueError("a shape the reader did not expect")

    options = {"global_keyprefix": prefix}
    with Connection(
        settings.redis_url, transport="worker.service.broker:Transport", transport_options=options
    ) as connection:
        connection.transport.on_unreadable = lambda exc, text: seen.append((exc, text))
        with Consumer(connection, [Queue(name, routing_key=name)], callbacks=[fail]):
            connection.drain_events(timeout=5)
        assert [str(exc) for exc, _ in seen] == ["a shape the reader did not expect"]
        assert redis_client.hlen(f"{prefix}unacked") == 0
    assert redis_client.llen(f"{prefix}{name}") == 0  # nothing restored on close
    redis_client.delete(*redis_client.keys(f"{prefix}*") or [f"{prefix}none"])
    redis_client.close()
