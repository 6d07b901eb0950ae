"""The real-time path end to end: real worker and scheduler processes on real Redis,
the local gateways of push/testing checking the wire format, a planted FAISS index."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.worker.conftest import WorkerProcess, node_name, wait_for
from tests.worker.realtime import (
    Gateways,
    build_planted_index,
    realtime_processes,
    register,
    rule,
    seed_shop,
    write_config,
)
from worker.client import PushrecClient
from worker.service import ingest
from worker.service.runtime import Runtime
from worker.service.userview import user_view
from worker.settings import Settings

pytestmark = pytest.mark.integration

RULES = [
    rule("cart", "cart_abandoned", delay_s=2),
    rule("cross_sell", "post_purchase", delay_s=0, items=3),
    rule("cheaper", "price_drop", min_drop_pct=10),
    rule("restock", "back_in_stock"),
]


Shop = tuple[Runtime, dict[str, str]]


@pytest.fixture
def make_shop(settings: Settings, tmp_path: Path, gateways: Gateways) -> Iterator[Any]:
    """Build a shop: rules file, gateways, a published planted index, the catalog.
    Returns a runtime in the test process (same settings as the workers) and the
    workers' environment."""
    opened: list[Runtime] = []

    def make(rules: list[dict[str, Any]] = RULES, **top: Any) -> Shop:
        gateways.reset()
        store = tmp_path / "index"
        build_planted_index(store)
        top = {"cap_marketing_per_day": 100, "cap_total_per_day": 100, **top}
        config = write_config(tmp_path / "pushrec.toml", rules, **top)
        env = {**gateways.env, "PUSHREC_CONFIG": str(config), "PUSHREC_INDEX_STORE": str(store)}
        overrides = settings.model_dump(include=CONNECTION_FIELDS)
        with patched_environ(env):
            full = Settings.load(**overrides)
        rt = Runtime.open(full)
        opened.append(rt)
        seed_shop(rt, time.time())
        return rt, env

    yield make
    for rt in opened:
        rt.close()


@contextmanager
def patched_environ(env: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


CONNECTION_FIELDS = {
    "redis_url", "broker_url", "key_prefix", "broker_key_prefix", "state_dir",
    "queue_activity", "queue_push", "queue_maintenance",
}  # fmt: skip


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


@pytest.mark.redis_kinds  # the whole path on a cluster too: rule, delayed set, outbox, push
def test_cart_left_alone_sends_exactly_one_push_with_relevant_items(
    make_shop: Any, settings: Settings, tmp_path: Path, gateways: Gateways, client: PushrecClient
) -> None:
    rt, env = make_shop()
    token = gateways.targets["fcm"]
    register(rt, "u0-1", "fcm", token, time.time())
    with realtime_processes(settings, tmp_path, env) as procs:
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
        view = user_view(rt.redis, rt.keys, "u0-1", time.time())
        assert view["user_id"] == "u0-1"
        for proc in procs:
            assert "Traceback" not in proc.log(), proc.log()[-3000:]


def test_purchase_within_the_delay_cancels_the_cart_push(
    make_shop: Any, settings: Settings, tmp_path: Path, gateways: Gateways, client: PushrecClient
) -> None:
    rt, env = make_shop()
    token = gateways.targets["fcm"]
    register(rt, "u1-1", "fcm", token, time.time())
    with realtime_processes(settings, tmp_path, env):
        client.track(event("a1", "u1-1", "add_to_cart", "b1-2"))
        client.track(event("p1", "u1-1", "purchase", "b1-2"))
        wait_for(
            lambda: any(d["rule"] == "cart" for d in rt.audit.decisions("u1-1")),
            timeout=30,
            what="cart decision",
        )
        cart = next(d for d in rt.audit.decisions("u1-1") if d["rule"] == "cart")
        assert cart["action"] == "suppress"
        assert cart["reason"] == "condition: cart bought since the trigger"
        assert fcm_messages(gateways, token, "cart") == []
        # the purchase itself invites a cross-sell, of other items than the one bought
        wait_for(lambda: len(fcm_messages(gateways, token, "cross_sell")) == 1, what="cross-sell")
        items = fcm_messages(gateways, token, "cross_sell")[0]["data"]["items"].split(",")
        assert "b1-2" not in items and items[0].startswith("b1-")


def test_holdout_shoppers_get_nothing_and_are_recorded(
    make_shop: Any, settings: Settings, tmp_path: Path, gateways: Gateways, client: PushrecClient
) -> None:
    rt, env = make_shop([rule("cross_sell", "post_purchase", holdout_pct=100)])
    token = gateways.targets["fcm"]
    register(rt, "u2-1", "fcm", token, time.time())
    with realtime_processes(settings, tmp_path, env):
        client.track(event("p1", "u2-1", "purchase", "b2-2"))
        wait_for(lambda: bool(rt.audit.decisions("u2-1")), what="decision")
        [decision] = rt.audit.decisions("u2-1")
        # made as a treated message is, and held out by the push worker where it would
        # have gone to the gateway
        assert decision["action"] == "queued" and decision["message"]["cell"] == "holdout"
        assert decision["policy"]["steps"][-1]["step"] == "holdout"
        mid = decision["message_id"]
        wait_for(lambda: rt.outbox.state(mid).get("state") == "held_out", what="held out")
        # a later purchase of a held-out recommendation counts for the holdout cell
        held_item = decision["message"]["items"][0]
        client.track(event("p2", "u2-1", "purchase", held_item))
        wait_for(
            lambda: rt.audit.stats(["cross_sell"])["cross_sell"]["held_out_converted"] == 1,
            what="holdout conversion",
        )
    assert gateways.accepted("fcm") == []


def test_quiet_hours_defer_the_push_to_their_end(
    make_shop: Any, settings: Settings, tmp_path: Path, gateways: Gateways, client: PushrecClient
) -> None:
    rt, env = make_shop()
    token = gateways.targets["fcm"]
    now = time.gmtime()
    start = f"{now.tm_hour:02d}:00"
    end = f"{(now.tm_hour + 2) % 24:02d}:00"
    register(rt, "u3-1", "fcm", token, time.time(), quiet_hours={"start": start, "end": end})
    with realtime_processes(settings, tmp_path, env):
        client.track(event("p1", "u3-1", "purchase", "b3-1"))
        wait_for(lambda: bool(rt.audit.decisions("u3-1")), what="decision")
        decision = rt.audit.decisions("u3-1")[0]
        assert decision["action"] == "defer"
        due = rt.delayed.due_at(f"defer:{decision['message_id']}")
        assert due is not None and due > time.time() + 3600 - 1  # at the window's end, not before
        time.sleep(2)
    assert fcm_messages(gateways, token) == []


def test_price_drop_and_restock_reach_interested_shoppers_only(
    make_shop: Any, settings: Settings, tmp_path: Path, gateways: Gateways, client: PushrecClient
) -> None:
    rt, env = make_shop()
    fcm, webhook = gateways.targets["fcm"], gateways.targets["webhook"]
    register(rt, "watcher", "fcm", fcm, time.time())
    register(rt, "bystander", "webhook", webhook, time.time())
    ingest.upsert_items(rt, [{"item_id": "b0-9", "stock": 0}], time.time())
    with realtime_processes(settings, tmp_path, env):
        client.track(event("v1", "watcher", "view", "b0-5"))
        client.track(event("v2", "watcher", "view", "b0-9"))
        client.track(event("v3", "bystander", "view", "b1-1"))
        wait_for(lambda: rt.metrics.snapshot().get("events.applied", 0) == 3, what="views")
        client.upsert_items([{"item_id": "b0-5", "price": 12.0}])  # 15 -> 12: -20%
        client.upsert_items([{"item_id": "b0-9", "stock": 3}])  # back in stock
        wait_for(lambda: len(fcm_messages(gateways, fcm)) == 2, what="price drop and restock")
        rules_sent = sorted(m["data"]["rule"] for m in fcm_messages(gateways, fcm))
        assert rules_sent == ["cheaper", "restock"]
        cheaper = next(m for m in fcm_messages(gateways, fcm) if m["data"]["rule"] == "cheaper")
        assert cheaper["data"]["items"].split(",")[0] == "b0-5"
        client.upsert_items([{"item_id": "b0-5", "price": 11.5}])  # -4%: below the threshold
        time.sleep(2)
    assert len(fcm_messages(gateways, fcm)) == 2
    assert gateways.accepted("webhook") == []


def test_gateway_410_deactivates_the_device(
    make_shop: Any, settings: Settings, tmp_path: Path, gateways: Gateways, client: PushrecClient
) -> None:
    rt, env = make_shop()
    token = gateways.targets["apns"]
    register(rt, "u0-7", "apns", token, time.time() - 60)
    gateways.unregister("apns", token)
    with realtime_processes(settings, tmp_path, env):
        client.track(event("p1", "u0-7", "purchase", "b0-1"))
        wait_for(
            lambda: not user_view(rt.redis, rt.keys, "u0-7", time.time())["devices"][0]["active"],
            what="device deactivated",
        )
    mid = rt.audit.decisions("u0-7")[0]["message_id"]
    attempts = rt.outbox.attempts(mid)
    assert attempts[-1]["outcome"] == "device_invalid" and attempts[-1]["status"] == 410
    assert rt.outbox.state(mid)["state"] == "failed"


def test_redelivered_deliver_task_sends_once(
    make_shop: Any, settings: Settings, tmp_path: Path, gateways: Gateways, client: PushrecClient
) -> None:
    rt, env = make_shop()
    token = gateways.targets["fcm"]
    register(rt, "u1-5", "fcm", token, time.time())
    with realtime_processes(settings, tmp_path, env):
        client.track(event("p1", "u1-5", "purchase", "b1-5"))
        wait_for(lambda: len(fcm_messages(gateways, token)) == 1, what="push")
        mid = rt.audit.decisions("u1-5")[0]["message_id"]
        client.send("pushrec.deliver", message_id=mid)  # as if the broker redelivered it
        client.send("pushrec.fire", **{"rule": "cross_sell", "user_id": "u1-5", "trigger_id": "p1",
                                        "trigger_ts": time.time(), "items": ["b1-5"]})  # fmt: skip
        time.sleep(2)
    assert len(fcm_messages(gateways, token)) == 1


def test_caps_hold_when_many_triggers_race(
    make_shop: Any, settings: Settings, tmp_path: Path, gateways: Gateways, client: PushrecClient
) -> None:
    rt, env = make_shop(cap_marketing_per_day=2)
    token = gateways.targets["fcm"]
    register(rt, "u2-9", "fcm", token, time.time())
    with realtime_processes(settings, tmp_path, env, workers=2):
        orders = [
            event(f"p{n}", "u2-9", "purchase", f"b2-{n}", props={"order_id": f"o{n}"})
            for n in range(10)
        ]
        client.track_batch(orders)  # ten orders: ten triggers racing for two slots
        wait_for(lambda: len(rt.audit.decisions("u2-9")) == 10, what="all decisions")
        # every queued message settled (sent, or stopped by the caps at send time)
        wait_for(lambda: rt.outbox.queued_count() == 0, what="deliveries settled")
    assert len(fcm_messages(gateways, token)) == 2


def test_index_swap_mid_stream_causes_no_error(
    make_shop: Any, settings: Settings, tmp_path: Path, gateways: Gateways, client: PushrecClient
) -> None:
    rt, env = make_shop()
    token = gateways.targets["fcm"]
    store = Path(env["PUSHREC_INDEX_STORE"])
    users = [f"u{b}-{n}" for b in range(4) for n in range(10, 14)]
    for user in users:  # one device each (a token registered again moves to its new owner)
        register(rt, user, "fcm", f"{token}-{user}", time.time())
    with realtime_processes(settings, tmp_path, env, workers=2) as procs:
        for n, user in enumerate(users[:8]):
            client.track(event(f"a{n}", user, "purchase", f"b{user[1]}-{n % 12}"))
        new_version = build_planted_index(store, seed=1)  # publishes the CURRENT file
        rt.redis.set(rt.keys.index_version, new_version)
        for n, user in enumerate(users[8:], start=8):
            client.track(event(f"a{n}", user, "purchase", f"b{user[1]}-{n % 12}"))
            time.sleep(0.4)
        wait_for(lambda: len(gateways.accepted("fcm")) == len(users), timeout=60, what="pushes")
        wait_for(lambda: all(new_version in p.log() for p in procs[:2]), what="swap logged")
        for proc in procs:
            assert "Traceback" not in proc.log() and not proc.errors(), proc.log()[-3000:]


def test_a_corrupt_index_is_refused_and_the_old_one_keeps_serving(
    make_shop: Any, settings: Settings, tmp_path: Path
) -> None:
    rt, env = make_shop()
    store = Path(env["PUSHREC_INDEX_STORE"])
    holder = rt.index
    good = holder.version
    assert good is not None
    bad = build_planted_index(store, seed=2)
    (store / bad / "factors.npy").write_bytes(b"\x93NUMPY garbage")
    rt.redis.set(rt.keys.index_version, bad)
    holder.between_tasks(now=1e12)
    holder.wait_loaded()
    assert holder.version == good
    assert holder.index is not None and len(holder.index) > 0


def test_a_push_worker_on_threads_sends_concurrently_and_each_message_once(
    make_shop: Any, settings: Settings, tmp_path: Path, gateways: Gateways, client: PushrecClient
) -> None:
    """`--pool threads` for a push node facing a slow gateway: each pool thread sends
    through its own event loop, so the sends overlap."""
    rt, env = make_shop([rule("cross_sell", "post_purchase", delay_s=0)])
    shoppers = {f"u{n % 4}-t{n}": f"threads-test-token-{n:04d}" for n in range(8)}
    for user, token in shoppers.items():
        register(rt, user, "fcm", token, time.time())
    gateways.slow_down("fcm", 400)
    activity = WorkerProcess(
        settings, tmp_path / "activity.log", "activity", 2, env=env,
        command=("worker", "--concurrency=2", f"--name={node_name('activity')}", "--loglevel=INFO",
                 f"--queues={settings.queue_activity}"),
    )  # fmt: skip
    push = WorkerProcess(
        settings, tmp_path / "push.log", "push", 4, env=env,
        command=("worker", "--pool=threads", "--concurrency=4", f"--name={node_name('push')}",
                 "--loglevel=INFO", f"--queues={settings.queue_push}"),
    )  # fmt: skip
    try:
        for n, user in enumerate(shoppers):
            client.track(event(f"p{n}", user, "purchase", f"b{n % 4}-1"))
        wait_for(lambda: len(gateways.accepted("fcm")) >= len(shoppers), timeout=30, what="pushes")
        time.sleep(1)  # nothing more may follow
        got = sorted(row["message"]["token"] for row in gateways.accepted("fcm"))
        assert got == sorted(shoppers.values())
        assert gateways.max_in_flight("fcm") >= 2
        for proc in (activity, push):
            assert "Traceback" not in proc.log(), proc.log()[-3000:]
    finally:
        activity.stop()
        push.stop()


Figures = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _scrape(port: int) -> Figures:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(figures: Figures, name: str, **labels: str) -> float:
    return figures[(name, frozenset(labels.items()))]


def _secrets(gateways: Gateways, shopper: str, email: str) -> list[str]:
    """Everything that must never reach a log: the shopper's raw id, an email, device
    tokens, the Web Push endpoint and keys, the webhook URL and every credential."""
    env = gateways.env
    account = json.loads(Path(env["PUSHREC_FCM_CREDENTIALS"]).read_text())
    subscription = json.loads(Path(gateways.targets["webpush"]).read_text())
    pems = [
        Path(env[k]).read_text() for k in ("PUSHREC_APNS_KEY_FILE", "PUSHREC_VAPID_PRIVATE_KEY")
    ]
    plain = [
        shopper, email, gateways.targets["fcm"], gateways.targets["apns"],
        gateways.targets["webhook"], subscription["endpoint"], subscription["keys"]["p256dh"],
        subscription["keys"]["auth"], env["PUSHREC_WEBHOOK_SECRET"], account["client_email"],
        env["PUSHREC_VAPID_SUBJECT"].removeprefix("mailto:"),
        *(pem.splitlines()[1] for pem in [*pems, account["private_key"]]),
    ]  # fmt: skip
    return [*plain, *(json.dumps(s)[1:-1] for s in plain)]  # also as JSON escapes them


def _streams(rt: Runtime) -> str:
    """Every entry of every stream under the runtime's prefix, as one text."""
    text = []
    for key in rt.redis.scan_iter(match=f"{rt.keys.prefix}:*", count=1000):
        if rt.redis.type(key) == "stream":
            text.append(json.dumps(rt.redis.xrange(key), ensure_ascii=False))
    return "\n".join(text)


def test_logs_and_metrics_of_the_realtime_path_name_no_shopper_token_or_secret(
    make_shop: Any, settings: Settings, tmp_path: Path, gateways: Gateways, client: PushrecClient
) -> None:
    """A worker and the scheduler log JSON lines only, none holding an id, token,
    endpoint, email or secret; Celery's success lines stay, without results (a fire task
    returns message titles); both serve the metrics; a credentials failure shows as an
    ERROR line with its event name, a counter and an open breaker."""
    title = "Title-Marker {{ items[0].title }}"
    rules = [
        rule("cross_sell", "post_purchase", delay_s=0, title=title),
        rule("cart", "cart_abandoned", delay_s=1, title=title),
    ]
    rt, env = make_shop(rules)
    shopper, other, email = "Zoë-42", "Ann-7", "zoe.42@shop.example"
    refused_token = f"{gateways.targets['fcm']}-refused"
    ports = _free_port(), _free_port()
    worker = WorkerProcess(
        settings, tmp_path / "worker.log", "obs", 2, env=env,
        command=("worker", "--concurrency=2", f"--name={node_name('obs')}", "--loglevel=INFO",
                 f"--metrics-port={ports[0]}"),
    )  # fmt: skip
    scheduler = WorkerProcess(
        settings, tmp_path / "scheduler.log", "scheduler", 1, env=env,
        command=("scheduler", "--loglevel=INFO", f"--metrics-port={ports[1]}"),
        ready="is the leader",
    )  # fmt: skip
    try:
        client.register_device(shopper, "fcm", token=gateways.targets["fcm"])
        client.register_device(shopper, "apns", token=gateways.targets["apns"])
        client.register_device(shopper, "webhook", token=gateways.targets["webhook"])
        subscription = json.loads(Path(gateways.targets["webpush"]).read_text())
        client.register_device(shopper, "webpush", subscription=subscription)
        client.register_device(other, "fcm", token=refused_token)
        # bad input carrying secrets: an FCM token sent as an APNs one, a Web Push
        # subscription with an unknown field, a call with an unknown kwarg
        client.register_device(shopper, "apns", token=gateways.targets["fcm"])
        client.register_device(shopper, "webpush", subscription={**subscription, "x": 1})
        client.send("pushrec.register_device", user_id=shopper, channel="fcm",
                    token=gateways.targets["fcm"], colour="red")  # fmt: skip
        for user in (shopper, other):
            client.set_preferences(user, consent={"marketing": {"*": True}}, timezone="UTC")
        wait_for(lambda: len(user_view(rt.redis, rt.keys, shopper, time.time())["devices"]) == 4)
        wait_for(lambda: len(rt.rejected.recent(10)) == 3, what="the bad registrations")
        client.track(event("p1", shopper, "purchase", "b0-1", props={"note": email}))
        client.track(event("c1", shopper, "add_to_cart", "b0-2"))
        wait_for(lambda: len(fcm_messages(gateways, gateways.targets["fcm"], "cart")) == 1)
        wait_for(lambda: len(gateways.accepted("webhook")) == 2, what="webhook pushes")
        gateways.script("fcm", [{"status": 403, "reason": "PERMISSION_DENIED"}], key=refused_token)
        client.track(event("p2", other, "purchase", "b1-1"))
        wait_for(
            lambda: any(r.get("event") == "credentials_rejected" for r in worker.errors()),
            what="credentials ERROR line",
        )
        before_erasure = _streams(rt)
        assert client.forget_user(shopper, wait_s=30)
        after_erasure = _streams(rt)
        scraped = [_scrape(port) for port in ports]
    finally:
        worker.stop()
        scheduler.stop()

    for figures in scraped:
        assert _value(figures, "pushrec_messages_total", channel="fcm", outcome="credentials") == 1
        assert _value(figures, "pushrec_rules_fired_total", rule="cart") == 1
        opened = [v for (n, labels), v in figures.items() if n == "pushrec_breaker_open"]
        assert opened == [1]
        assert _value(figures, "pushrec_gateway_latency_seconds_count", channel="webhook") == 2
    records = worker.records() + scheduler.records()  # every line of both streams is JSON
    successes = [r["message"] for r in records if r["logger"] == "celery.app.trace"]
    assert any(m.startswith("Task pushrec.fire[") and "succeeded" in m for m in successes)
    everything = worker.log() + scheduler.log()
    assert "Title-Marker" not in everything
    leaked = [s for s in _secrets(gateways, shopper, email) if s in everything]
    assert leaked == []
    # Streams keep what a replay needs (ids, event content such as the email in props)
    # until erasure, and never a token, an endpoint or a credential; after it, no id.
    secrets = _secrets(gateways, shopper, email)
    credentials = [s for s in secrets if shopper not in s and email not in s]
    assert [s for s in credentials if s in before_erasure] == []
    assert [s for s in secrets if s in after_erasure] == []
