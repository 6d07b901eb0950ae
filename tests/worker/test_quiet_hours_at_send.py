"""Quiet hours at send time: a message decided outside them and due inside waits for their
end; a transactional one does not."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from datetime import time as dt_time
from typing import Any
from zoneinfo import ZoneInfo

from tests.clock import RUN_NOW
from tests.worker.realtime import (
    Gateways,
    fire_post_purchase,
    shopper,
)
from worker.delivery.requests import DeliveryRequest
from worker.service import ingest
from worker.service.runtime import Runtime
from worker.service.userview import decisions_view

LONDON = ZoneInfo("Europe/London")
QUIET = {"quiet_hours": {"start": "21:30", "end": "08:00"}, "timezone": "Europe/London"}


def london(day: date, hh_mm: str) -> float:
    """An instant on `day` at wall time `hh_mm` in London."""
    return datetime.combine(day, dt_time.fromisoformat(hh_mm), LONDON).timestamp()


# Two days before the run: every instant below is in the past, in any season.
DAY = datetime.fromtimestamp(RUN_NOW, LONDON).date() - timedelta(days=2)
MORNING = london(DAY + timedelta(days=1), "08:00")  # the end of the night's quiet hours


def test_a_message_decided_before_quiet_hours_and_sent_inside_them_waits_for_their_end(
    recording_shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, _ = recording_shop
    decided, sent = london(DAY, "21:29"), london(DAY, "22:01")
    user = shopper(rt, gateways, "q", decided - 60, **QUIET)
    mid = fire_post_purchase(rt, user, "b0-1", decided)

    [outcome] = rt.sender().deliver_many([DeliveryRequest(mid)], sent)

    why = f"quiet hours until {MORNING:.0f}"
    assert outcome == {"action": "deferred", "reason": why, "defer_until": MORNING}
    assert gateways.accepted("fcm") == []
    assert rt.delayed.due_at(f"deliver:{mid}") == MORNING
    [decision] = [d for d in decisions_view(rt.audit, rt.outbox, user) if d.get("message_id")]
    delivery = decision["delivery"]  # what `pushrec user show` prints
    assert (delivery["state"]["state"], delivery["state"]["reason"]) == ("deferred", why)
    assert delivery["attempts"] == [{"at": sent, "attempt": 0, "deferred": why}]
    assert rt.audit.stats(["post_purchase"])["post_purchase"]["deferred"] == 1
    assert rt.metrics.snapshot()["delivery.deferred"] == 1
    assert rt.outbox.stuck(MORNING, 0) == []  # parked, not lost: the sweeper leaves it

    assert rt.delayed.claim_due(MORNING - 1) == []
    [due] = rt.delayed.claim_due(MORNING)
    [after] = rt.sender().deliver_many(DeliveryRequest.from_kwargs(due.job.kwargs), MORNING)
    [again] = rt.sender().deliver_many([DeliveryRequest(mid)], MORNING + 1)
    assert (after["action"], again["action"]) == ("sent", "settled")
    assert len(gateways.accepted("fcm")) == 1


def test_quiet_hours_set_after_the_decision_hold_the_message_at_send_time(
    recording_shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, _ = recording_shop
    decided = london(DAY, "20:00")
    user = shopper(rt, gateways, "p", decided - 60, timezone="Europe/London")
    mid = fire_post_purchase(rt, user, "b0-1", decided)
    ingest.set_preferences(rt, {"user_id": user, **QUIET}, decided + 60)

    [outcome] = rt.sender().deliver_many([DeliveryRequest(mid)], london(DAY, "23:00"))

    assert (outcome["action"], outcome["defer_until"]) == ("deferred", MORNING)
    assert gateways.accepted("fcm") == []


def test_a_retry_parked_into_quiet_hours_is_deferred_on_arrival_and_sent_once_after(
    recording_shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, _ = recording_shop
    first, parked_until = london(DAY, "20:00"), london(DAY, "23:00")
    user = shopper(rt, gateways, "t", first - 60, **QUIET)
    mid = fire_post_purchase(rt, user, "b0-1", first)
    gateways.script("fcm", [{"status": 503, "retry_after": str(int(parked_until - first))}])

    [busy] = rt.sender().deliver_many([DeliveryRequest(mid)], first)
    assert busy["action"] == "retrying"
    [retry] = rt.delayed.claim_due(parked_until)
    rt.delayed.ack_many([retry])
    [arrival] = rt.sender().deliver_many(
        DeliveryRequest.from_kwargs(retry.job.kwargs), parked_until
    )

    assert (arrival["action"], arrival["defer_until"]) == ("deferred", MORNING)
    assert gateways.accepted("fcm") == []
    [later] = rt.delayed.claim_due(MORNING)
    assert later.job.kwargs == retry.job.kwargs  # the same retry, to the same devices
    [after] = rt.sender().deliver_many(DeliveryRequest.from_kwargs(later.job.kwargs), MORNING)
    assert after["action"] == "sent"
    assert len(gateways.accepted("fcm")) == 1


def test_quiet_hours_do_not_hold_a_transactional_message_at_send_time(
    recording_shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, _ = recording_shop
    rules = tuple(
        r.model_copy(update={"purpose": "transactional"}) if r.name == "post_purchase" else r
        for r in rt.settings.rules
    )
    orders = Runtime.open(
        rt.settings.model_copy(update={"rules": rules}), enqueue=lambda task, kwargs: None
    )
    try:
        decided, sent = london(DAY, "21:29"), london(DAY, "22:01")
        user = shopper(orders, gateways, "o", decided - 60, **QUIET)
        mid = fire_post_purchase(orders, user, "b0-1", decided)

        [outcome] = orders.sender().deliver_many([DeliveryRequest(mid)], sent)
    finally:
        orders.close()

    assert outcome["action"] == "sent"
    assert len(gateways.accepted("fcm")) == 1
