"""The settling of a delivery: a message counted delivered once, in the settling's round
trip or after its reply, whatever fails or races."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from tests.worker.realtime import (
    Gateways,
    fire_post_purchase,
    pipeline_trips,
    shopper,
)
from worker.delivery.requests import DeliveryRequest
from worker.service.runtime import Runtime
from worker.store.pinned import PinnedPipeline


def _after_claiming(monkeypatch: pytest.MonkeyPatch, sender: Any, meanwhile: Any) -> None:
    """`meanwhile()` runs after `sender` claims its devices, before it sends: what
    another process does to the message between a delivery's load and its settling."""
    real_claim = sender._reserve_and_claim

    def claim(*args: Any) -> Any:
        capped = real_claim(*args)
        meanwhile()
        return capped

    monkeypatch.setattr(sender, "_reserve_and_claim", claim)


def test_a_first_delivery_is_counted_and_its_items_noted_in_the_settlings_round_trip(
    recording_shop: tuple[Runtime, list[Any]], gateways: Gateways, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt, _ = recording_shop
    user = shopper(rt, gateways, "count-ahead")
    mid = fire_post_purchase(rt, user, "b0-1")
    ran = pipeline_trips(monkeypatch, starting="HSETNX")  # the settling's, then any after it
    [outcome] = rt.sender().deliver_many([DeliveryRequest(mid)], time.time(), "task")
    assert outcome["action"] == "sent"
    [settling] = ran  # nothing follows it
    stats, pushed = rt.keys.rule_stats("post_purchase"), rt.keys.user(user).pushed_items
    hsetnx = settling.index(("HSETNX", rt.keys.message(mid).state))
    assert settling.index(("HINCRBY", stats)) > hsetnx  # counted after it, in its trip
    assert ("ZADD", pushed) in settling
    assert rt.audit.stats(["post_purchase"])["post_purchase"]["delivered"] == 1
    record = rt.outbox.get(mid)
    assert record is not None and set(rt.redis.zrange(pushed, 0, -1)) == set(record.items)


def test_a_message_another_delivery_took_first_is_counted_back_down(
    recording_shop: tuple[Runtime, list[Any]], gateways: Gateways, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted ahead of its first-delivery reply, a message whose first delivery was
    another's (between this one's load and its settling) is counted back down after it:
    the other delivery counts it."""
    rt, _ = recording_shop
    user = shopper(rt, gateways, "count-back")
    mid = fire_post_purchase(rt, user, "b0-1")
    sender = rt.sender()
    state = rt.keys.message(mid).state
    _after_claiming(monkeypatch, sender, lambda: rt.redis.hsetnx(state, "delivered_at", "1"))
    ran = pipeline_trips(monkeypatch, starting="HSETNX")  # the settling's, then any after it
    [outcome] = sender.deliver_many([DeliveryRequest(mid)], time.time(), "task")
    assert outcome["action"] == "sent" and len(gateways.accepted("fcm")) == 1
    [_, back] = ran
    assert back == [("HINCRBY", rt.keys.rule_stats("post_purchase"))]
    assert rt.audit.stats(["post_purchase"])["post_purchase"]["delivered"] == 0


@pytest.mark.parametrize(
    "failures",
    [("landed",), ("landed", "landed"), ("refused",), ("refused", "refused")],
    ids="-".join,
)
def test_a_settling_retried_counts_the_message_once(
    recording_shop: tuple[Runtime, list[Any]],
    gateways: Gateways,
    monkeypatch: pytest.MonkeyPatch,
    failures: tuple[str, ...],
) -> None:
    """The settling's tries fail with the connection: after their writes landed (the
    reply lost) or before (refused). However many landed, the message is counted
    once: the first try counts ahead, a later one counts only a first delivery its own
    reply proves. (A first try refused and a second landed leaves it uncounted: the third
    try's reply cannot tell that second try from another delivery.)"""
    rt, _ = recording_shop
    user = shopper(rt, gateways, "count-once")
    mid = fire_post_purchase(rt, user, "b0-1")
    real = PinnedPipeline.execute
    failing = list(failures)

    def execute(pipe: PinnedPipeline, raise_on_error: bool = True) -> list[Any]:
        if not any(args[0] == "HSETNX" for args, _ in pipe.command_stack) or not failing:
            return real(pipe, raise_on_error)
        if failing.pop(0) == "landed":
            real(pipe, raise_on_error)
        else:
            pipe.reset()
        raise redis.ConnectionError("Connection closed by server.")

    monkeypatch.setattr(PinnedPipeline, "execute", execute)
    monkeypatch.setattr(time, "sleep", lambda s: None)  # `_patiently`'s waits
    [outcome] = rt.sender().deliver_many([DeliveryRequest(mid)], time.time(), "task")
    assert not failing and outcome["action"] == "sent" and len(gateways.accepted("fcm")) == 1
    assert rt.audit.stats(["post_purchase"])["post_purchase"]["delivered"] == 1


def test_a_message_loaded_as_delivered_is_counted_when_its_reply_proves_it_first(
    recording_shop: tuple[Runtime, list[Any]], gateways: Gateways, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not counted ahead (its state said delivered when loaded), a message whose
    first-delivery reply says it is the first after all (that state gone since) is
    counted after the reply."""
    rt, _ = recording_shop
    user = shopper(rt, gateways, "count-late")
    mid = fire_post_purchase(rt, user, "b0-1")
    state = rt.keys.message(mid).state
    rt.redis.hset(state, "delivered_at", "1")
    sender = rt.sender()
    _after_claiming(monkeypatch, sender, lambda: rt.redis.hdel(state, "delivered_at"))
    ran = pipeline_trips(monkeypatch, starting="HSETNX")  # the settling's, then any after it
    [outcome] = sender.deliver_many([DeliveryRequest(mid)], time.time(), "task")
    assert outcome["action"] == "sent"
    [settling, late] = ran
    assert ("HINCRBY", rt.keys.rule_stats("post_purchase")) not in settling
    assert ("HINCRBY", rt.keys.rule_stats("post_purchase")) in late
    assert rt.audit.stats(["post_purchase"])["post_purchase"]["delivered"] == 1
