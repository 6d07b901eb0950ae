"""The Prometheus exposition: every figure read back from Redis, parsed as Prometheus
would, after a real path through ingest, firing and delivery to the local gateways."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from indexing import LocalStore
from tests.worker.conftest import worker_env
from tests.worker.realtime import Gateways, fire_post_purchase, gateway_shop, shopper
from worker.contract import NOOP
from worker.delivery.requests import DeliveryRequest
from worker.service import ingest
from worker.service.app import create_app
from worker.service.exposition import PushrecCollector, prometheus_text
from worker.service.runtime import Runtime
from worker.settings import Settings
from worker.store.client import connect_state
from worker.store.keys import Keys

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def shop(settings: Settings, gateways: Gateways, tmp_path: Path) -> Iterator[Runtime]:
    with gateway_shop(settings, gateways, tmp_path / "index", lambda task, kwargs: None) as rt:
        yield rt


def parse(text: str) -> tuple[set[str], Samples]:
    families = list(text_string_to_metric_families(text))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), names
    samples = {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}
    return set(names), samples


def test_exposition_reports_events_decisions_sends_latency_breaker_queues_and_index(
    shop: Runtime, gateways: Gateways
) -> None:
    rt = shop
    now = time.time()
    ingest.track_one(rt, {"event_id": "x", "user_id": "u", "type": "teleport", "ts": now}, now, "d")
    sent_to = shopper(rt, gateways, "m")
    delivered = fire_post_purchase(rt, sent_to, "b0-1")
    rt.sender().deliver_many([DeliveryRequest(delivered)], time.time())
    refused_for = shopper(rt, gateways, "k")
    refused = fire_post_purchase(rt, refused_for, "b1-1")
    gateways.script("fcm", [{"status": 403, "reason": "PERMISSION_DENIED"}])
    rt.sender().deliver_many([DeliveryRequest(refused)], time.time())
    app = create_app(rt.settings)
    app.send_task(NOOP, queue=rt.settings.queue_maintenance)
    collector = PushrecCollector.for_app(app)

    try:
        names, samples = parse(prometheus_text(collector))
    finally:
        collector.close()

    def value(name: str, **labels: str) -> float:
        return samples[(name, frozenset(labels.items()))]

    assert all(name.startswith("pushrec_") for name in names), names
    assert value("pushrec_redis_up") == 1
    assert value("pushrec_events_total", result="applied") == 2
    assert value("pushrec_rejected_total", task="pushrec.track", code="unknown_type") == 1
    assert value("pushrec_rules_fired_total", rule="post_purchase") == 2
    assert value("pushrec_decisions_total", action="queued", step="all_passed") == 2
    assert value("pushrec_messages_total", channel="fcm", outcome="delivered") == 1
    assert value("pushrec_messages_total", channel="fcm", outcome="credentials") == 1
    assert value("pushrec_gateway_latency_seconds_count", channel="fcm") == 2
    assert value("pushrec_gateway_latency_seconds_bucket", channel="fcm", le="+Inf") == 2
    assert value("pushrec_gateway_latency_seconds_sum", channel="fcm") > 0
    [breaker] = [labels for name, labels in samples if name == "pushrec_breaker_open"]
    assert dict(breaker)["channel"] == "fcm" and samples[("pushrec_breaker_open", breaker)] == 1
    assert value("pushrec_queue_messages", queue=rt.settings.queue_maintenance) == 1
    assert value("pushrec_queue_messages", queue=rt.settings.queue_push) == 0
    [index] = [dict(labels) for name, labels in samples if name == "pushrec_index_info"]
    assert index["version"] == rt.index.version
    assert 0 <= value("pushrec_index_age_seconds") < 3600
    labels = {v for _, ls in samples for _, v in ls}
    assert not labels & {"u", sent_to, refused_for, gateways.targets["fcm"]}


def test_an_unreachable_redis_is_reported_not_raised(settings: Settings) -> None:
    collector = PushrecCollector(
        connect_state("redis://127.0.0.1:1/0"), Keys("p"), [], LocalStore(settings.state_dir), dict
    )
    try:
        names, samples = parse(prometheus_text(collector))
    finally:
        collector.close()
    assert names == {"pushrec_redis_up"}
    assert samples[("pushrec_redis_up", frozenset())] == 0


def test_pushrec_metrics_prometheus_prints_the_exposition(
    settings: Settings, runtime: Runtime
) -> None:
    now = time.time()
    event: dict[str, Any] = {"event_id": "e", "user_id": "u", "type": "view", "item_id": "i"}
    ingest.track_one(runtime, {**event, "ts": now}, now, "d")
    done = subprocess.run(
        [sys.executable, "-m", "worker", "metrics", "--prometheus"],
        env=worker_env(settings), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    _, samples = parse(done.stdout)
    assert samples[("pushrec_events_total", frozenset({("result", "applied")}))] == 1
