"""pushrec on several hosts, for real: Linux network namespaces make a small network (see
`network.py`) with a Redis Cluster host (three masters and their replicas), a broker host
(a plain Redis for Celery), an object-store host (SeaweedFS holding the index) and two
worker hosts, each with its own state folder, index cache and `pushrec worker` processes;
host A also runs `pushrec scheduler`. The test process, outside, is the shop: it sends
baskets of the shipped Online Retail sample and catalogue changes through the broker, and
serves the local push gateways on its end of the LAN.

Midway a rebuilt index is published to the object store and the Redis pointer flipped:
both hosts must pull and serve it. Then host B loses power (every process on it SIGKILLed)
with tasks in hand mid-send; host A takes them over once the visibility timeout passes. In the
end every push reached the gateway once (docs/realtime.md: at most one duplicate per device
per kill of a push worker after the gateway took the message, none here beyond that), every
event is in the interaction log and was decided, and the decisions after the flip name the
rebuilt index."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from indexing import build_version, read_events, read_items_csv
from indexing.events import open_text
from indexing.s3 import S3Objects
from indexing.sample import sample_files
from push.testing.serve import local_gateways
from tests.multihost.network import OPT_OUT, NamespacesUnavailable, Network, network
from tests.object_store import TEST_CREDENTIALS, seaweedfs_server
from tests.redis_cluster import redis_cluster
from tests.redis_server import private_redis_server
from tests.worker.conftest import WorkerProcess, node_name, producer_for, wait_for, worker_env
from tests.worker.realtime import Gateways, register, rule, write_config
from tests.worker.sharded import log_entries
from worker.firing.index_store import open_index_store
from worker.replay.engine import _catalog
from worker.service import ingest
from worker.service.runtime import Runtime
from worker.settings import Settings

pytestmark = [pytest.mark.multihost, pytest.mark.integration, pytest.mark.timeout(300)]

SHOPPERS = 160
LINES_PER_BASKET = 4  # a basket's first lines: each is a purchase event
STREAM_FROM = "2011-03-01"  # baskets from here on are the live stream
FIRST_INDEX_UNTIL = "2011-02-01"  # the index at start-up: history before this
REBUILT_UNTIL = STREAM_FROM  # the rebuilt index: history up to the stream
# One push per shopper and day: later lines of a basket (and later baskets) are
# suppressed by the cooldown, so each shopper expects exactly one push.
RULE = rule("cross_sell", "post_purchase", delay_s=0, items=2, cooldown_s=86_400)
PUSH_CONCURRENCY = 2
TASK_LINE = re.compile(r"Task (pushrec\.[\w.]+)\[([\w-]+)\] (received|succeeded)")
BUCKET = "pushrec-multihost"


@dataclass
class Shop:
    """How the shop starts pushrec on its hosts: the network, the settings every host
    shares (each adds its own folders) and their environment."""

    net: Network
    settings: Settings
    env: dict[str, str]
    tmp_path: Path

    def host_settings(self, host: str) -> Settings:
        folder = self.tmp_path / host
        return self.settings.model_copy(
            update={"state_dir": folder / "state", "index_cache": folder / "index-cache"}
        )

    def start(self, host: str, name: str, command: tuple[str, ...], ready: str) -> WorkerProcess:
        """A pushrec process on `host`, with its own state folder and index cache."""
        settings = self.host_settings(host)
        env = {**self.env, "PUSHREC_INDEX_CACHE": str(settings.index_cache_dir)}
        return WorkerProcess(
            settings, self.tmp_path / f"{name}.log", name, 1, env=env, command=command,
            ready=ready, prefix=self.net[host].prefix,
        )  # fmt: skip


@pytest.fixture
def namespaces() -> Iterator[Network]:
    """The five hosts; without namespaces the test fails (CI), unless a developer opts
    out with PUSHREC_TEST_NO_NETNS=1."""
    try:
        with network(["cluster", "broker", "objects", "a", "b"]) as net:
            yield net
    except NamespacesUnavailable as exc:
        if os.environ.get(OPT_OUT) == "1":
            pytest.skip(f"network namespaces unavailable ({exc}); {OPT_OUT}=1 set")
        pytest.fail(
            f"the multi-host test needs Linux network namespaces (root or CAP_NET_ADMIN, "
            f"iproute2's `ip`): {exc}. Developers without them may set {OPT_OUT}=1."
        )


def _history_and_stream() -> tuple[list[dict[str, str]], list[list[dict[str, Any]]]]:
    """The sample's rows before the stream (the index's history), and the stream: the
    first basket from STREAM_FROM on of the first SHOPPERS shoppers, in basket order."""
    with open_text(sample_files().events) as fh:
        rows = list(csv.DictReader(fh))
    history = [r for r in rows if r["ts"] < STREAM_FROM]
    baskets: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        user, basket = row["user_id"], row["event_id"].split("-")[0]
        if row["ts"] < STREAM_FROM or (user not in baskets and len(baskets) == SHOPPERS):
            continue
        lines = baskets.setdefault(user, [])
        if len(lines) == LINES_PER_BASKET or (lines and lines[0]["basket"] != basket):
            continue
        lines.append(
            {
                "event_id": row["event_id"],
                "user_id": user,
                "type": "purchase",
                "item_id": row["item_id"],
                "quantity": int(row["quantity"]),
                "price": float(row["price"]),
                "basket": basket,
            }
        )
    for lines in baskets.values():
        for line in lines:
            del line["basket"]
    return history, list(baskets.values())


def _publish(settings: Settings, rt: Runtime, history: list[dict[str, str]], until: str) -> str:
    """Build on the history before `until`, upload it to the object store, publish it,
    flip the Redis pointer (as the rebuild job does); the version."""
    log, _ = read_events([r for r in history if r["ts"] < until])
    items, _ = read_items_csv(sample_files().items)
    built = build_version(
        log, open_index_store(settings), catalog=items, publish_it=True, force=True
    )
    rt.redis.set(rt.keys.index_version, built.version)
    return built.version


def _tasks(process: WorkerProcess) -> dict[str, set[str]]:
    """Task ids by what the log says of them: `received`, `succeeded`."""
    seen: dict[str, set[str]] = defaultdict(set)
    for _, task_id, what in TASK_LINE.findall(process.log()):
        seen[what].add(task_id)
    return seen


def _in_hand(process: WorkerProcess) -> set[str]:
    tasks = _tasks(process)
    return tasks["received"] - tasks["succeeded"]


def _tags_by_token(gateways: Gateways) -> defaultdict[str, list[str]]:
    """The messages the FCM gateway took, by device token: their collapse tags (the
    message ids), one per request."""
    tags: defaultdict[str, list[str]] = defaultdict(list)
    for r in gateways.accepted("fcm"):
        tags[r["message"]["token"]].append(r["message"]["android"]["notification"]["tag"])
    return tags


def _whereabouts(task_ids: list[str], a: WorkerProcess, b: WorkerProcess) -> dict[str, Any]:
    """For a failure message: what each host's log says of these tasks."""
    seen = {"a": _tasks(a), "b": _tasks(b)}
    return {
        task_id: {host: sorted(w for w, ids in tasks.items() if task_id in ids)
                  for host, tasks in seen.items()}
        for task_id in task_ids
    }  # fmt: skip


def _broker_keys(url: str) -> dict[str, int]:
    """For a failure message: the broker's keys and their sizes (queues, unacked)."""
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    sizes = {}
    for key in client.scan_iter(count=1000):
        size = {"list": client.llen, "hash": client.hlen, "zset": client.zcard}.get(
            client.type(key)
        )
        sizes[key] = int(size(key)) if size else -1
    client.close()
    return sizes


def _user_show(shop: Shop, host: str, user: str) -> dict[str, Any]:
    """`pushrec user show` run on `host`, as an operator there would."""
    settings = shop.host_settings(host)
    done = subprocess.run(
        [*shop.net[host].prefix, sys.executable, "-m", "worker", "user", "show", user],
        env=worker_env(settings, shop.env), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    view: dict[str, Any] = json.loads(done.stdout)
    return view


def test_two_worker_hosts_share_the_index_and_one_survives_the_others_power_loss(
    namespaces: Network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = namespaces
    for name, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    history, baskets = _history_and_stream()
    users = [basket[0]["user_id"] for basket in baskets]
    events = [event for basket in baskets for event in basket]
    with (
        redis_cluster(net["cluster"].address, net["cluster"].prefix) as cluster,
        private_redis_server(host=net["broker"].address, prefix=net["broker"].prefix) as broker,
        seaweedfs_server(host=net["objects"].address, prefix=net["objects"].prefix) as s3,
        local_gateways(tmp_path / "gateways", host=net.outside) as gateway_state,
    ):
        S3Objects(BUCKET, endpoint_url=s3).create_bucket()
        gateways = Gateways(gateway_state)
        gateways.slow_down("fcm", 50)  # pushes take a while: some are in hand at the kill
        config = write_config(
            tmp_path / "pushrec.toml", [RULE], cap_marketing_per_day=100, cap_total_per_day=100
        )
        env = {
            **gateways.env,
            **TEST_CREDENTIALS,
            "PUSHREC_CONFIG": str(config),
            "PUSHREC_INDEX_STORE": f"s3://{BUCKET}/index",
            "PUSHREC_S3_ENDPOINT_URL": s3,
        }
        named = {
            k.removeprefix("PUSHREC_").lower(): v
            for k, v in env.items()
            if k.startswith("PUSHREC_") and k != "PUSHREC_CONFIG"
        }
        settings = Settings.load(
            redis_url=cluster.url, broker_url=broker, key_prefix="mh", broker_key_prefix="mh:",
            state_dir=tmp_path / "outside" / "state", index_cache=tmp_path / "outside" / "cache",
            visibility_timeout_s=10, task_time_limit_s=8, rules=[RULE],
            cap_marketing_per_day=100, cap_total_per_day=100, **named,
        )  # fmt: skip
        producer = producer_for(settings)
        rt = Runtime.open(settings, enqueue=lambda task, kwargs: producer.send(task, **kwargs))
        shop = Shop(net, settings, env, tmp_path)
        started: list[WorkerProcess] = []
        try:
            now = time.time()
            catalog = _catalog(sample_files().items, [], 0.0)
            for start in range(0, len(catalog), 500):
                ingest.upsert_items(
                    rt, [{**i, "ts": now} for i in catalog[start : start + 500]], now
                )
            tokens = {u: f"{gateways.targets['fcm']}-{u}" for u in users}
            for user, token in tokens.items():
                register(rt, user, "fcm", token, now)
            first = _publish(settings, rt, history, FIRST_INDEX_UNTIL)

            worker = ("worker", f"--concurrency={PUSH_CONCURRENCY}", "--loglevel=INFO")
            a = shop.start("a", "a-worker", (*worker, f"--name={node_name('a')}"), " ready.")
            started.append(a)
            started.append(
                shop.start("a", "a-scheduler", ("scheduler", "--loglevel=INFO"), "is the leader")
            )
            b = shop.start("b", "b-worker", (*worker, f"--name={node_name('b')}"), " ready.")
            started.append(b)

            carried: dict[str, list[str]] = {}  # task id -> event ids
            sender: dict[str, str] = {}  # task id -> the shopper whose basket it carries

            def send(basket: list[dict[str, Any]]) -> None:
                task_id = producer.track_batch([{**e, "ts": time.time()} for e in basket])
                carried[task_id] = [e["event_id"] for e in basket]
                sender[task_id] = basket[0]["user_id"]

            third = len(baskets) // 3
            for basket in baskets[:third]:
                send(basket)
            wait_for(
                lambda: all(f"serving index {first}" in p.log() for p in (a, b)),
                timeout=60, what="both hosts serving the first index",
            )  # fmt: skip

            # Midway: a rebuilt index and a catalogue change (a price cut).
            rebuilt = _publish(settings, rt, history, REBUILT_UNTIL)
            cuts = [{**i, "price": round(i.get("price", 1.0) * 0.8, 2)} for i in catalog[:50]]
            producer.upsert_items([{**i, "ts": time.time()} for i in cuts])
            for basket in baskets[third : 2 * third]:
                send(basket)
            wait_for(
                lambda: all(f"serving index {rebuilt}" in p.log() for p in (a, b)),
                timeout=60, what="both hosts serving the rebuilt index",
            )  # fmt: skip

            # Host B loses power with tasks in hand mid-send: the gateway holds the
            # requests, and a few more baskets make pushes (sent inline by the track task
            # that fires them) for it to hold. A task that ends without a gateway call
            # (its push suppressed) leaves B's hands within milliseconds: wait for one
            # held there a second.
            gateways.hold("fcm")
            held_at_kill = 2 * third + 2 * PUSH_CONCURRENCY
            for basket in baskets[2 * third : held_at_kill]:
                send(basket)
            first_seen: dict[str, float] = {}

            def task_held_by_b() -> bool:
                held = _in_hand(b)
                for task in held:
                    first_seen.setdefault(task, time.monotonic())
                return gateways.in_flight("fcm") > 0 and any(
                    time.monotonic() - first_seen[t] >= 1.0 for t in held
                )

            wait_for(task_held_by_b, timeout=60, what="host B with a task held mid-send")
            killed = net["b"].kill()
            assert killed
            in_hand_at_kill = _in_hand(b)
            gateways.hold("fcm", held=False)
            for basket in baskets[held_at_kill:]:
                send(basket)

            def settled() -> bool:
                tags = _tags_by_token(gateways)
                return (
                    all(tags[t] for t in tokens.values())
                    and in_hand_at_kill <= _tasks(a)["succeeded"]
                )

            try:
                wait_for(settled, timeout=90, what="a push to every shopper")
            except AssertionError:
                tags = _tags_by_token(gateways)
                missing = [u for u, t in tokens.items() if not tags[t]]
                theirs = [t for t, u in sender.items() if u in missing]
                raise AssertionError(
                    f"no push to {missing}; metrics {rt.metrics.snapshot()}; in hand at the "
                    f"kill {in_hand_at_kill}, of which A finished "
                    f"{in_hand_at_kill & _tasks(a)['succeeded']}; their tasks "
                    f"{_whereabouts(theirs, a, b)}; broker {_broker_keys(broker)}"
                ) from None
            time.sleep(2)  # nothing more may follow

            # No event lost: the interaction log (every shard) holds each one; an event
            # twice only when B died between its side effects and its confirm (the
            # redelivered task redoes them: docs/realtime.md, "Failures").
            logged = Counter(e["event_id"] for e in log_entries(rt))
            assert set(logged) == {e["event_id"] for e in events}
            repeated = {event for event, n in logged.items() if n > 1}
            assert repeated <= {e for task in in_hand_at_kill for e in carried.get(task, [])}
            assert max(logged.values()) <= 2
            # One push per shopper (the cooldown), each message reaching the gateway
            # once, give or take the documented bound: one duplicate per push process of
            # B killed after the gateway took its message.
            tags = _tags_by_token(gateways)
            assert {u: len(set(tags[t])) for u, t in tokens.items()} == dict.fromkeys(users, 1)
            extra = sum(len(sent) - 1 for sent in tags.values())
            assert extra <= PUSH_CONCURRENCY, {t: s for t, s in tags.items() if len(s) > 1}
            # Host A took over what B held when it died (same task ids, redelivered).
            assert in_hand_at_kill and in_hand_at_kill <= _tasks(a)["received"]
            # Both hosts served the rebuilt index; decisions after the flip name it.
            late = baskets[-1][0]["user_id"]
            shown = _user_show(shop, "a", late)
            assert shown["decisions"][0]["index_version"] == rebuilt
            for host in ("a", "b"):
                cache = shop.host_settings(host).index_cache_dir
                assert (cache / rebuilt).is_dir(), sorted(p.name for p in cache.iterdir())
            for process in started[:2]:  # host A's worker and scheduler
                assert process.errors() == [], process.log()[-3000:]
        finally:
            for process in started:
                process.stop()
            rt.close()
            producer.close()
            gateways.close()
