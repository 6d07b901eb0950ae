"""Delivery outcomes through the fake gateway (`push.fake`), handed to the runtime as a
prebuilt router: what each gateway answer does to the message and the device, with no
HTTP server. The wire formats are checked against the local gateways elsewhere."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from push import Channel, Outcome, Router
from push.fake import RecordingGateway
from tests.worker.realtime import build_planted_index, planted_catalog, register
from worker.delivery.requests import DeliveryRequest
from worker.policy.contact import holdout_bucket
from worker.policy.jobs import FireJob
from worker.service import ingest
from worker.service.runtime import Runtime
from worker.settings import Settings


@pytest.fixture
def fake() -> RecordingGateway:
    return RecordingGateway(Channel.FCM)


@pytest.fixture
def rt(settings: Settings, tmp_path: Path, fake: RecordingGateway) -> Iterator[Runtime]:
    build_planted_index(tmp_path / "index")
    full = settings.model_copy(
        update={
            "cap_marketing_per_day": 100,
            "cap_total_per_day": 100,
            "index_store": tmp_path / "index",
        }
    )
    queued: list[tuple[str, dict[str, Any]]] = []
    runtime = Runtime.open(
        full, enqueue=lambda task, kwargs: queued.append((task, kwargs)), router=Router([fake])
    )
    ingest.upsert_items(runtime, planted_catalog(), time.time())
    yield runtime
    runtime.close()


def queued_message(rt: Runtime, prefix: str, token: str) -> str:
    """A post-purchase message queued for a consenting shopper outside the holdout."""
    user = next(
        u for u in (f"{prefix}{n}" for n in range(100)) if holdout_bucket("post_purchase", u) >= 10
    )
    now = time.time()
    register(rt, user, "fcm", token, now)
    job = FireJob("post_purchase", user, f"p-{user}", now, ("b0-1",), {})
    [decision] = rt.firer().fire_many([job], now)
    assert decision["action"] == "queued", decision
    return str(decision["message_id"])


def test_a_delivered_message_is_sent_once_and_counted(rt: Runtime, fake: RecordingGateway) -> None:
    mid = queued_message(rt, "ok", "tok-ok")
    [first] = rt.sender().deliver_many([DeliveryRequest(mid)], time.time())
    [again] = rt.sender().deliver_many([DeliveryRequest(mid)], time.time())
    assert first["action"] == "sent" and again["action"] == "settled"
    assert [m.device.address for m in fake.sent] == ["tok-ok"]
    assert rt.outbox.state(mid)["state"] == "sent"


def test_a_gone_device_is_deactivated_and_the_message_failed(
    rt: Runtime, fake: RecordingGateway
) -> None:
    fake.invalid_tokens.add("tok-gone")
    mid = queued_message(rt, "gone", "tok-gone")
    [outcome] = rt.sender().deliver_many([DeliveryRequest(mid)], time.time())
    assert outcome["action"] == "failed"
    user = rt.outbox.load_many([mid])[0][0]
    assert user is not None
    [device] = rt.contacts.devices(user.user_id).values()
    assert device["active"] is False


def test_an_unavailable_gateway_parks_a_retry_in_the_delayed_set(
    rt: Runtime, fake: RecordingGateway
) -> None:
    mid = queued_message(rt, "busy", "tok-busy")
    fake.script(Outcome.RETRY)
    [outcome] = rt.sender().deliver_many([DeliveryRequest(mid)], time.time())
    assert outcome["action"] == "retrying" and outcome["retry_devices"] == 1
    [parked] = rt.delayed.claim_due(time.time() + 3600)
    assert parked.job.job_id == f"deliver:{mid}"
    retry = DeliveryRequest.from_kwargs(parked.job.kwargs)
    assert rt.sender().deliver_many(retry, time.time())[0]["action"] == "sent"
    assert [m.device.address for m in fake.sent] == ["tok-busy", "tok-busy"]
