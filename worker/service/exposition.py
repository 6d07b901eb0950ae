"""pushrec's figures in Prometheus text format, read from Redis at scrape time.

Every figure lives in Redis (`store/metrics.py`: counters, the gateway latency
histograms; rule counts; breaker, queue and index state), written by whichever process
did the work, in the same pipelines as the work. So one collector reading Redis is right
across prefork children, pool threads and hosts, with no per-process files to merge
(prometheus_client's multiprocess mode) and nothing lost when a child is recycled. The
flip side: every endpoint (`pushrec worker --metrics-port`, `pushrec scheduler
--metrics-port`, `pushrec metrics --prometheus`) serves the same cluster-wide figures;
scrape one of them, or aggregate instances with `max`, never `sum`.

Names start with `pushrec_`; counters end in `_total`, durations in `_seconds`. Labels
take values from closed sets (channels, outcomes, codes, policy steps, rule names, queue
names, breaker route fingerprints), never a shopper, device or item.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIServer

from prometheus_client import generate_latest, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from indexing import ArtifactError, ArtifactStore
from worker.delivery.outbox import Outbox
from worker.firing.index_store import open_index_store
from worker.service.app import PushrecApp
from worker.shoppers.audit import STAT_FIELDS
from worker.store.client import StateRedis, connect_state
from worker.store.delayed import DelayedJobs
from worker.store.errors import TRANSIENT
from worker.store.keys import BREAKER_ROUTES_KEPT_S, Keys
from worker.store.metrics import Metrics
from worker.store.scripts import Scripts

QueueDepths = Callable[[], dict[str, int]]

_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")

# Redis counter name patterns -> (family, labels); the rest become pushrec_<name>_total.
_PATTERNS: tuple[tuple[re.Pattern[str], str, tuple[str, ...], str], ...] = (
    (re.compile(r"^events\.(\w+)$"), "pushrec_events", ("result",),
     "Activity events by result: applied, duplicate, resumed."),
    (re.compile(r"^(.+)\.rejected\.(\w+)$"), "pushrec_rejected", ("task", "code"),
     "Rejected input by task and code."),
    (re.compile(r"^decisions\.(\w+)\.(\w+)$"), "pushrec_decisions", ("action", "step"),
     "Rule firings by what was decided and the step that decided it."),
    (re.compile(r"^messages\.(\w+)\.(\w+)$"), "pushrec_messages", ("channel", "outcome"),
     "Sends to devices by channel and gateway outcome."),
    (re.compile(r"^tasks\.dead_lettered$"), "pushrec_dead_letters", (),
     "Task calls moved to the dead-letter stream."),
)  # fmt: skip
_SKIPPED = re.compile(r"^.+\.rejected$")  # the sum of a task's codes


def broker_queue_depths(app: PushrecApp, state: StateRedis) -> QueueDepths:
    """Messages waiting in each of pushrec's queues. A Redis broker keeps a queue as a
    list (`broker_key_prefix` + name), read with LLEN: kombu's passive declare misses
    prefixed queues there. RabbitMQ answers a passive declare; a queue it does not know
    is empty. `state` is the state store's client, used when the broker is the same Redis
    (else a client of its own, kept as long as the process)."""
    settings = app.settings
    names = (settings.queue_activity, settings.queue_push, settings.queue_maintenance)
    url = settings.effective_broker_url
    if urlsplit(url).scheme in {"redis", "rediss", "unix"}:
        broker = state if url == settings.redis_url else connect_state(url)
        prefix = settings.broker_key_prefix

        def lengths() -> dict[str, int]:
            pipe = broker.pipeline(transaction=False)
            for name in names:
                pipe.llen(prefix + name)
            return dict(zip(names, map(int, pipe.execute()), strict=True))

        return lengths

    def declared() -> dict[str, int]:
        out: dict[str, int] = {}
        with app.connection_for_read() as conn:
            for name in names:
                channel: Any = conn.channel()  # kombu's stubs lack queue_declare
                try:
                    out[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
                except conn.channel_errors:
                    out[name] = 0
                finally:
                    with contextlib.suppress(*conn.connection_errors, *conn.channel_errors):
                        channel.close()
        return out

    return declared


class PushrecCollector(Collector):
    """Reads every figure from Redis (and the broker) on each `collect()`."""

    def __init__(
        self,
        client: StateRedis,
        keys: Keys,
        rules: list[str],
        index_store: ArtifactStore,
        queue_depths: QueueDepths,
    ) -> None:
        self._client = client
        self._keys = keys
        self._metrics = Metrics(client, keys)
        self._rules = rules
        self._index_store = index_store
        self._queue_depths = queue_depths

    @classmethod
    def for_app(cls, app: PushrecApp) -> PushrecCollector:
        """A collector on its own Redis connection (the one of a serving thread)."""
        settings = app.settings
        assert settings.redis_url is not None
        client = connect_state(settings.redis_url)
        return cls(
            client,
            Keys(settings.key_prefix, settings.shards),
            [rule.name for rule in settings.all_rules],
            open_index_store(settings),
            broker_queue_depths(app, client),
        )

    def close(self) -> None:
        self._client.close()

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("pushrec_redis_up", "1 if Redis answered this scrape, else 0.")
        try:
            families = [
                *self._counters(),
                *self._rule_counts(),
                self._latency(),
                *self._breakers(),
                *self._backlog(),
                *self._index(time.time()),
            ]
        except TRANSIENT:  # away, loading, or a replica without its master
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _counters(self) -> list[CounterMetricFamily]:
        families: dict[str, CounterMetricFamily] = {}
        for name, value in self._metrics.snapshot().items():
            if _SKIPPED.match(name):
                continue
            for pattern, family, labels, doc in _PATTERNS:
                if match := pattern.match(name):
                    metric = families.setdefault(
                        family, CounterMetricFamily(family, doc, labels=labels)
                    )
                    metric.add_metric(list(match.groups()), value)
                    break
            else:
                family = "pushrec_" + _UNSAFE.sub("_", name)
                metric = CounterMetricFamily(family, f"Counter {name}.")
                metric.add_metric([], value)
                families[family] = metric
        return list(families.values())

    def _rule_counts(self) -> list[CounterMetricFamily]:
        fired = CounterMetricFamily(
            "pushrec_rules_fired", "Rule firings (decisions taken) by rule.", labels=("rule",)
        )
        outcomes = CounterMetricFamily(
            "pushrec_rule_outcomes",
            "What came of each rule's firings and messages, as `pushrec stats` counts them.",
            labels=("rule", "outcome"),
        )
        pipe = self._client.pipeline(transaction=False)
        for rule in self._rules:
            pipe.hgetall(self._keys.rule_stats(rule))
        for rule, raw in zip(self._rules, pipe.execute(), strict=True):
            fired.add_metric([rule], int(raw.get("fired", 0)))
            for field in STAT_FIELDS:
                if field != "fired":
                    outcomes.add_metric([rule, field], int(raw.get(field, 0)))
        return [fired, outcomes]

    def _latency(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "pushrec_gateway_latency_seconds",
            "Time from request to answer of a push gateway, by channel.",
            labels=("channel",),
        )
        for channel, histogram in self._metrics.latency().items():
            buckets = [("+Inf" if b == float("inf") else repr(b), n) for b, n in histogram.buckets]
            family.add_metric([channel], buckets, histogram.sum_s)
        return family

    def _breakers(self) -> list[GaugeMetricFamily]:
        state = GaugeMetricFamily(
            "pushrec_breaker_open",
            "1 while a gateway route's circuit breaker is open (a credentials failure opens "
            "it for 5 minutes), else 0; route is the credential's or host's fingerprint.",
            labels=("channel", "route"),
        )
        now = time.time()
        recent = self._client.zrangebyscore(
            self._keys.breaker_routes, now - BREAKER_ROUTES_KEPT_S, "+inf"
        )  # a scrape only reads: the trip prunes
        routes = sorted(str(r) for r in recent)
        pipe = self._client.pipeline(transaction=False)
        for route in routes:
            pipe.get(self._keys.breaker(route).open)
        for route, until in zip(routes, pipe.execute(), strict=True):
            is_open = until is not None and float(until) > now
            state.add_metric([route.partition(":")[0], route], 1 if is_open else 0)
        return [state]

    def _backlog(self) -> list[GaugeMetricFamily]:
        queues = GaugeMetricFamily(
            "pushrec_queue_messages", "Messages waiting in a broker queue.", labels=("queue",)
        )
        for name, depth in self._queue_depths().items():
            queues.add_metric([name], depth)
        scripts = Scripts.register(self._client)  # no round trip; the readers need none
        delayed = DelayedJobs(self._client, self._keys, scripts).counts()
        outbox = Outbox(self._client, self._keys, scripts).queued_count()
        dead = self._client.xlen(self._keys.dead_letters)
        out = [
            queues,
            GaugeMetricFamily(
                "pushrec_delayed_jobs", "Jobs parked until due (rules, retries).", value=delayed
            ),
            GaugeMetricFamily(
                "pushrec_outbox_queued", "Messages queued for delivery, not settled.", value=outbox
            ),
            GaugeMetricFamily(
                "pushrec_dead_letters_kept",
                "Entries in the dead-letter stream (pushrec dead-letters).",
                value=dead,
            ),
        ]
        return out

    def _index(self, now: float) -> list[GaugeMetricFamily]:
        pointer = self._client.get(self._keys.index_version)
        version: str | None = str(pointer) if pointer else None
        if version is None:
            with contextlib.suppress(ArtifactError):
                version = self._index_store.current_version()
        if version is None:
            return []
        info = GaugeMetricFamily(
            "pushrec_index_info", "The published index version (1).", labels=("version",)
        )
        info.add_metric([version], 1)
        try:
            manifest = self._index_store.read_manifest(version)
            created = datetime.fromisoformat(str(manifest["created"]))
        except (ArtifactError, OSError, KeyError, ValueError):
            return [info]
        age = GaugeMetricFamily(
            "pushrec_index_age_seconds",
            "Seconds since the published index was built.",
            value=max(0.0, now - created.timestamp()),
        )
        return [info, age]


def registry_of(collector: PushrecCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def prometheus_text(collector: PushrecCollector) -> str:
    """The figures in Prometheus text format (version 0.0.4)."""
    return generate_latest(registry_of(collector)).decode()


def serve_metrics(collector: PushrecCollector, port: int, addr: str = "0.0.0.0") -> WSGIServer:
    """Serve `GET /metrics` on `port` from a daemon thread; `shutdown()` the server to stop."""
    server, _thread = start_http_server(port, addr, registry=registry_of(collector))
    return server
