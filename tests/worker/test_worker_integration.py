"""End to end: real `pushrec worker` processes on real Redis, fed through the client."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from tests.worker.conftest import WorkerProcess, wait_for
from worker.client import PushrecClient
from worker.runtime import Runtime
from worker.settings import Settings
from worker.userview import user_view

pytestmark = pytest.mark.integration


def event(
    event_id: str, type_: str = "view", item: str = "sku-1", user: str = "u1", **kw: Any
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "user_id": user,
        "type": type_,
        "item_id": item,
        "ts": time.time() - 60,
        **kw,
    }


def counter(rt: Runtime, name: str) -> int:
    return rt.metrics.snapshot().get(name, 0)


def test_worker_applies_events_once_and_rejects_bad_ones(
    start_worker: Callable[..., WorkerProcess], client: PushrecClient, runtime: Runtime
) -> None:
    start_worker()
    client.upsert_items([{"item_id": "sku-1", "category": "mugs", "price": 5.0, "stock": 3}])
    client.track(event("e1", "add_to_cart"))
    client.track(event("e1", "add_to_cart"))  # the web app retried: same event_id
    client.track_batch(
        [event("e2", "view", item="sku-2"), {"event_id": "e3", "user_id": "u1", "type": "wave"}]
    )
    client.track({"event_id": "e4"})
    client.send("pushrec.track", evnt={"typo": True})
    client.register_device("u1", "fcm", token="device-token-1")
    client.set_preferences("u1", timezone="Europe/Paris", consent={"marketing": {"*": True}})

    wait_for(
        lambda: (
            counter(runtime, "events.applied") == 2 and counter(runtime, "events.duplicate") == 1
        ),
        what="events",
    )
    wait_for(lambda: counter(runtime, "preferences.updated") == 1, what="preferences")
    state = user_view(runtime.redis, runtime.keys, runtime.contacts, "u1", time.time())
    assert state["cart"][0]["item_id"] == "sku-1" and state["cart"][0]["quantity"] == 1
    assert state["preferences"]["timezone"] == "Europe/Paris"
    assert len(state["devices"]) == 1
    codes = sorted(r["code"] for r in runtime.rejected.recent(10))
    assert codes == ["bad_call", "missing_field", "unknown_type"]
    assert "unknown kwargs ['evnt']" in str(runtime.rejected.recent(10))


def test_two_worker_processes_on_one_shopper_end_consistent(
    start_worker: Callable[..., WorkerProcess], client: PushrecClient, runtime: Runtime
) -> None:
    start_worker("w1", concurrency=2)
    start_worker("w2", concurrency=2)
    n = 400
    for i in range(n):
        client.track(event(f"c{i}", "add_to_cart", item=f"sku-{i % 10}"))
        if i % 4 == 0:  # and some duplicates, racing their originals on other processes
            client.track(event(f"c{i}", "add_to_cart", item=f"sku-{i % 10}"))
    wait_for(
        lambda: (
            counter(runtime, "events.applied") + counter(runtime, "events.duplicate") == n + n // 4
        ),
        timeout=60,
        what="all events",
    )
    assert (counter(runtime, "events.applied"), counter(runtime, "events.duplicate")) == (n, n // 4)
    state = user_view(runtime.redis, runtime.keys, runtime.contacts, "u1", time.time())
    assert sum(c["quantity"] for c in state["cart"]) == n
    assert state["profile"]["events"] == n
    assert runtime.redis.xlen(runtime.keys.interaction_log) == n


def test_minimal_protocol2_message_from_a_non_python_producer_is_processed(
    start_worker: Callable[..., WorkerProcess], runtime: Runtime
) -> None:
    """Like celery-node: only `lang`, `task`, `id` headers, JSON body, no other options."""
    start_worker()
    settings = runtime.settings
    body = [
        [],
        {"event": event("node-1", "purchase")},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]
    with Connection(
        settings.redis_url, transport_options={"global_keyprefix": settings.broker_key_prefix}
    ) as conn:
        producer = conn.Producer()
        producer.publish(
            json.dumps(body),
            routing_key=settings.queue_activity,
            content_type="application/json",
            content_encoding="utf-8",
            headers={"lang": "js", "task": "pushrec.track", "id": str(uuid.uuid4())},
        )
    wait_for(lambda: counter(runtime, "events.applied") == 1, what="node event")
    assert (
        user_view(runtime.redis, runtime.keys, runtime.contacts, "u1", time.time())["rfm"][
            "frequency"
        ]
        == 1
    )


def test_forget_user_through_the_queue_reports_what_it_removed(
    start_worker: Callable[..., WorkerProcess], client: PushrecClient, runtime: Runtime
) -> None:
    start_worker()
    client.track(event("f1", "add_to_cart", user="leaver"))
    wait_for(lambda: counter(runtime, "events.applied") == 1, what="event")
    report = client.forget_user("leaver", wait_s=30)
    assert isinstance(report, dict)
    assert report["user_id"] == "leaver"
    assert report["log_entries_removed"] == {"interactions": 1, "rejected": 0}
    assert runtime.keys.user("leaver").cart in report["keys_removed"]


def test_worker_killed_mid_stream_loses_no_event(
    settings: Settings, client: PushrecClient, runtime: Runtime, tmp_path: Path
) -> None:
    # A short visibility timeout so the broker hands the dead worker's unacked
    # messages to the next worker within seconds rather than minutes.
    quick = settings.model_copy(update={"visibility_timeout_s": 10, "task_time_limit_s": 8})
    first = WorkerProcess(quick, tmp_path / "w1.log", "w1", concurrency=1)
    second: WorkerProcess | None = None
    try:
        n = 300
        client.track_batch([event(f"k{i}", item=f"sku-{i}") for i in range(n // 2)])
        for i in range(n // 2, n):
            client.track(event(f"k{i}", item=f"sku-{i}"))
        wait_for(lambda: counter(runtime, "events.applied") > 0, what="some progress")
        first.kill()  # SIGKILL the whole worker: whatever it held is unacked
        assert counter(runtime, "events.applied") < n
        second = WorkerProcess(quick, tmp_path / "w2.log", "w2", concurrency=2)
        wait_for(
            lambda: counter(runtime, "events.applied") == n,
            timeout=90,
            what="all events after the kill",
        )
        logged = [f["event_id"] for _, f in runtime.redis.xrange(runtime.keys.interaction_log)]  # type: ignore[union-attr]
        assert set(logged) == {f"k{i}" for i in range(n)}
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_redis_restart_mid_stream_loses_no_event_and_applies_none_twice(
    settings: Settings, tmp_path: Path
) -> None:
    """A private redis-server with AOF (fsync always) is restarted under a running worker."""
    import socket
    import subprocess

    from worker.embedded import find_redis_server

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = tmp_path / "redis"
    data.mkdir()
    args = [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
            "--appendonly", "yes", "--appendfsync", "always", "--save", ""]  # fmt: skip

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        import redis as redis_lib

        wait_for(lambda: _pings(redis_lib, port), what="redis up")
        return proc

    server = start()
    own = settings.model_copy(
        update={
            "redis_url": f"redis://127.0.0.1:{port}/0",
            "visibility_timeout_s": 10,
            "task_time_limit_s": 8,
        }
    )
    worker = WorkerProcess(own, tmp_path / "w.log", "w1", concurrency=2)
    rt = Runtime.open(own)
    producer = PushrecClient(
        str(own.redis_url),
        broker_key_prefix=own.broker_key_prefix,
        queues={"activity": own.queue_activity},
    )
    try:
        n = 400
        for i in range(n // 2):
            producer.track(event(f"r{i}", item=f"sku-{i}"))
        server.terminate()  # SIGTERM: redis writes the AOF and exits
        server.wait(timeout=10)
        server = start()
        for i in range(n // 2, n):
            producer.track(event(f"r{i}", item=f"sku-{i}"))
        # kombu 5.7 sometimes crashes the worker when the connection drops while it holds
        # unacked messages ("Unrecoverable error: ... 'hostname'"); a supervisor restarts
        # it, as one must in production, and the broker hands the messages over again.
        deadline = time.monotonic() + 90
        while counter(rt, "events.applied") < n and time.monotonic() < deadline:
            if worker.process.poll() is not None:
                worker.stop()
                worker = WorkerProcess(own, tmp_path / "w2.log", "w2", concurrency=2)
            time.sleep(0.2)
        if counter(rt, "events.applied") < n:  # say where the missing events are
            raw = redis_lib_client(own)
            print(
                "applied",
                counter(rt, "events.applied"),
                "queue",
                raw.llen(f"{own.broker_key_prefix}{own.queue_activity}"),
                "unacked",
                raw.hlen(f"{own.broker_key_prefix}unacked"),
                raw.zrange(f"{own.broker_key_prefix}unacked_index", 0, -1, withscores=True),
                time.time(),
                "keys",
                sorted(raw.keys(f"{own.broker_key_prefix}*"))[:20],
                rt.rejected.recent(5),
            )
        time.sleep(1)
        assert counter(rt, "events.applied") == n
        state = user_view(rt.redis, rt.keys, rt.contacts, "u1", time.time())
        assert state["profile"]["events"] == n
    finally:
        producer.close()
        rt.close()
        worker.stop()
        server.terminate()
        server.wait(timeout=10)


def _pings(redis_lib: Any, port: int) -> bool:
    try:
        return bool(redis_lib.Redis(port=port, socket_connect_timeout=0.2).ping())
    except redis_lib.RedisError:
        return False


def redis_lib_client(settings: Settings) -> Any:
    import redis as redis_lib

    return redis_lib.Redis.from_url(str(settings.redis_url), decode_responses=True)
