"""A Redis that loses our Lua scripts (restarted, a replica promoted) between a message's
sends and the writes that record them: the writes load the scripts and land, and
nothing is sent twice."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.worker.realtime import Gateways, fire_post_purchase, gateway_shop, register
from worker.delivery.requests import DeliveryRequest
from worker.delivery.settle import Settler
from worker.service.runtime import Runtime
from worker.settings import Settings
from worker.shoppers.contacts import device_id

# On a cluster the settling's scripts go by SHA alone (a cluster pipeline cannot load them
# first): there a lost script failed the writes after the sends, and the task's retry sent
# again.
pytestmark = pytest.mark.redis_kinds


@pytest.fixture
def rt(settings: Settings, gateways: Gateways, tmp_path: Path) -> Iterator[Runtime]:
    with gateway_shop(settings, gateways, tmp_path / "index", lambda task, kwargs: None) as rt:
        yield rt


def test_scripts_lost_after_the_sends_are_loaded_again_and_the_message_settles_once(
    rt: Runtime, gateways: Gateways, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One device takes the message, the other is gone (its deactivation a script, as is
    the read of the shopper's devices that follows): the scripts vanish just after the
    sends. Only what met the lost scripts runs again: each attempt is recorded once and
    each send counted once, at once (no wait), and a retry of the task sends nothing."""
    now = time.time()
    user = "lost-scripts"
    live, gone = f"fcm-live-{'x' * 20}", f"fcm-gone-{'x' * 20}"
    register(rt, user, "fcm", live, now)
    register(rt, user, "fcm", gone, now)
    gateways.unregister("fcm", gone)
    mid = fire_post_purchase(rt, user, "b0-1")
    sender = rt.sender()
    real = Settler.settle

    def scripts_lost_first(self: Settler, *args: Any, **kwargs: Any) -> None:
        rt.redis.script_flush()  # on a cluster: every primary
        real(self, *args, **kwargs)

    waits: list[float] = []
    monkeypatch.setattr(Settler, "settle", scripts_lost_first)
    monkeypatch.setattr(time, "sleep", waits.append)
    [outcome] = sender.deliver_many([DeliveryRequest(mid)], now + 1, "task")

    assert outcome["action"] == "sent" and waits == []
    assert [r["message"]["token"] for r in gateways.accepted("fcm")] == [live]
    assert rt.outbox.state(mid)["state"] == "sent"
    assert rt.contacts.devices(user)[device_id("fcm", gone)]["active"] is False
    assert len(rt.outbox.attempts(mid)) == 2  # one a device
    sends = {k: v for k, v in rt.metrics.snapshot().items() if k.startswith("messages.fcm.")}
    assert sends == {"messages.fcm.delivered": 1, "messages.fcm.device_invalid": 1}
    assert rt.audit.stats(["post_purchase"])["post_purchase"]["delivered"] == 1
    monkeypatch.setattr(Settler, "settle", real)
    [again] = sender.deliver_many([DeliveryRequest(mid)], now + 2, "task")  # a retry
    assert again["action"] == "settled"
    assert len(gateways.accepted("fcm")) == 1
