"""The real-time path end to end: real worker and scheduler processes on real Redis,
the local gateways of push/testing checking the wire format, a planted FAISS index."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from push.testing.serve import local_gateways
from tests.worker.conftest import wait_for
from tests.worker.realtime import (
    Gateways,
    build_planted_index,
    realtime_processes,
    register,
    rule,
    seed_shop,
    write_config,
)
from worker.runtime import Runtime
from worker.settings import Settings
from worker.userview import user_view

pytestmark = pytest.mark.integration

RULES = [
    rule("cart", "cart_abandoned", delay_s=2),
    rule("cross_sell", "post_purchase", delay_s=0, items=3),
    rule("cheaper", "price_drop", min_drop_pct=10),
    rule("restock", "back_in_stock"),
]


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    with local_gateways(tmp_path_factory.mktemp("gateways")) as state:
        gw = Gateways(state)
        yield gw
        gw.close()


@pytest.fixture
def shop(
    settings: Settings, tmp_path: Path, gateways: Gateways
) -> Iterator[tuple[Runtime, dict[str, str]]]:
    """Settings for workers (rules file, gateways, a published planted index) and a runtime
    in the test process with the same settings."""
    gateways.reset()
    store = tmp_path / "index"
    build_planted_index(store)
    config = write_config(
        tmp_path / "pushrec.toml", RULES, cap_marketing_per_day=100, cap_total_per_day=100
    )
    env = {**gateways.env, "PUSHREC_CONFIG": str(config), "PUSHREC_INDEX_STORE": str(store)}
    import os

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        full = Settings.load(**settings.model_dump(include={
            "redis_url", "key_prefix", "broker_key_prefix", "state_dir",
            "queue_activity", "queue_push", "queue_maintenance",
        }))  # fmt: skip
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    rt = Runtime.open(full)
    seed_shop(rt, time.time())
    yield rt, env
    rt.close()


def event(eid: str, user: str, type_: str, item: str, **kw: Any) -> dict[str, Any]:
    return {
        "event_id": eid,
        "user_id": user,
        "type": type_,
        "item_id": item,
        "ts": time.time(),
        **kw,
    }


def fcm_messages(
    gateways: Gateways, token: str, rule_name: str | None = None
) -> list[dict[str, Any]]:
    out = []
    for row in gateways.accepted("fcm"):
        message = row["message"]
        if message.get("token") == token and (
            rule_name is None or message.get("data", {}).get("rule") == rule_name
        ):
            out.append(message)
    return out


def test_cart_left_alone_sends_exactly_one_push_with_relevant_items(
    shop: tuple[Runtime, dict[str, str]], settings: Settings, tmp_path: Path, gateways: Gateways
) -> None:
    rt, env = shop
    token = gateways.targets["fcm"]
    register(rt, "u0-1", "fcm", token, time.time())
    with realtime_processes(settings, tmp_path, env) as procs:
        from worker.client import PushrecClient

        with PushrecClient(str(settings.redis_url), broker_key_prefix=settings.broker_key_prefix,
                           queues={"activity": settings.queue_activity}) as client:  # fmt: skip
            client.track(event("c1", "u0-1", "add_to_cart", "b0-3"))
            client.track(event("c1", "u0-1", "add_to_cart", "b0-3"))  # duplicate
            client.track(event("v1", "u0-1", "view", "b0-4"))
        wait_for(
            lambda: len(fcm_messages(gateways, token, "cart")) >= 1, timeout=30, what="cart push"
        )
        time.sleep(3)  # nothing more may follow
        [message] = fcm_messages(gateways, token, "cart")
        items = message["data"]["items"].split(",")
        assert items[0] == "b0-3"  # the cart item itself first
        assert items[1].startswith("b0-"), items  # then the shopper's block, by the index
        assert len(items) == 3 and sum(i.startswith("b0-") for i in items) == 2  # diversified
        view = user_view(rt.redis, rt.keys, rt.contacts, "u0-1", time.time())
        assert view["user_id"] == "u0-1"
        for proc in procs:
            assert "Traceback" not in proc.log(), proc.log()[-3000:]
