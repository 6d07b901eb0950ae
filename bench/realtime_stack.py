"""The stack bench/realtime.py measures: the shop (index, catalog, shoppers from the
Online Retail log, or the shipped sample without it: `retail.py`), the local gateways in
their own process, and one case with its own keys, queues and worker nodes, whose CPU use
it can sample."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
from retail import retail_csvs

import indexing
from indexing.events import open_text
from indexing.pipeline import build_version
from tests.redis_server import delete_prefix
from tests.worker.realtime import register, rule, write_config
from worker import contract
from worker.client import PushrecClient
from worker.delivery.outbox import message_id
from worker.service import ingest
from worker.service.runtime import Runtime
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
RULE = "post_purchase"
HISTORY_AGE_S = 2 * 86_400  # history older than trigger_max_age_s: state only, no rule


def write_bench_config(path: Path) -> Path:
    """The one rule measured (`RULE`: post_purchase, fired at once, FCM), with the caps,
    no-repeat window and per-credential send rate (500/s by default, which would cap the
    batched case) out of the way."""
    return write_config(
        path,
        [rule(RULE, "post_purchase", delay_s=0, channels=["fcm"])],
        cap_marketing_per_day=1_000_000,
        cap_marketing_per_week=1_000_000,
        cap_total_per_day=1_000_000,
        no_repeat_days=0,
        push_rate_per_s=1_000_000,
        push_rate_burst=1_000_000,
    )


# --- the shop: index, catalog, shoppers ----------------------------------------------
class Shop:
    """The Online Retail log converted, an index built and published, and per customer
    the list of (item, ts) purchases in time order."""

    def __init__(self, work: Path) -> None:
        started = time.perf_counter()
        events, items, self.source = retail_csvs(work / "online_retail")
        log, _ = indexing.read_events_csv(events)
        self.store = work / "index"
        built = build_version(log, self.store, publish_it=True, force=True)
        self.index = {"version": built.version, "kind": built.index.kind, **built.counts}
        self.items = [
            {
                "item_id": row["item_id"],
                "title": row["title"] or row["item_id"],
                "price": float(row["price"]),
                "stock": 100,
                "url": f"https://shop.example/p/{row['item_id']}",
            }
            for row in csv.DictReader(open_text(items))
        ]
        purchases: dict[str, list[str]] = defaultdict(list)
        with open_text(events) as fh:
            for row in csv.DictReader(fh):
                purchases[row["user_id"]].append(row["item_id"])
        # customers with at least one purchase beyond the history: the trigger
        self.customers = [(c, list(dict.fromkeys(i))) for c, i in purchases.items()]
        self.customers = [(c, i) for c, i in self.customers if len(i) >= 2]
        self.setup_s = time.perf_counter() - started

    def shoppers(self, tag: str, n: int, history: int) -> list[tuple[str, list[str], str]]:
        """`n` shoppers (id, history items, trigger item), cycling through customers."""
        out = []
        for k in range(n):
            customer, items = self.customers[k % len(self.customers)]
            trigger = items[min(history, len(items) - 1)]
            past = [i for i in items[:history] if i != trigger]
            out.append((f"{customer}-{tag}{k}", past, trigger))
        return out


@contextmanager
def local_gateway(state_dir: Path, keep_alive_s: float | None = None) -> Iterator[dict[str, Any]]:
    """`python -m push.testing serve` in its own process; yields its state JSON. Idle
    connections are closed after `keep_alive_s` (None: the servers' default)."""
    keep_alive = [] if keep_alive_s is None else [f"--keep-alive-s={keep_alive_s}"]
    process = subprocess.Popen(
        [sys.executable, "-m", "push.testing", "serve", f"--state-dir={state_dir}", *keep_alive],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("local gateways did not start")
        state = json.loads(line)
        state["pid"] = process.pid
        yield state
    finally:
        process.terminate()
        process.wait(timeout=30)


# --- one case: its own keys, queues and worker nodes ---------------------------------
Node = tuple[list[str], int, str]  # queues, concurrency, pool


class Case:
    def __init__(
        self,
        url: str,
        shop: Shop,
        gateway: dict[str, Any],
        config: Path,
        tmp: Path,
        gateway_latency_ms: float = 0.0,
        profile: Path | None = None,
    ) -> None:
        self.profile = profile
        self.prefix = f"rt{uuid.uuid4().hex[:8]}"
        self.url = url
        self.tmp = tmp
        self.queues = {q: f"{self.prefix}.{q}" for q in ("activity", "push", "maintenance")}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHREC_")}
        self.env.update(gateway["env"])
        self.env.update(
            PYTHONPATH=str(ROOT),
            PUSHREC_CONFIG=str(config),
            PUSHREC_INDEX_STORE=str(shop.store),
            PUSHREC_STATE_DIR=str(tmp / "state"),
            PUSHREC_REDIS_URL=url,
            PUSHREC_KEY_PREFIX=self.prefix,
            PUSHREC_BROKER_KEY_PREFIX=f"{self.prefix}:",
            PUSHREC_INDEX_REBUILD_CRON="",
            **{f"PUSHREC_QUEUE_{q.upper()}": name for q, name in self.queues.items()},
        )
        settings = Settings.load(
            redis_url=url,
            key_prefix=self.prefix,
            broker_key_prefix=f"{self.prefix}:",
            state_dir=tmp / "state",
        )
        self.rt = Runtime.open(settings)
        self.client = PushrecClient(url, broker_key_prefix=f"{self.prefix}:", queues=self.queues)
        self.admin = gateway["admin"]["fcm"]
        self.others = {"gateway": gateway["pid"], "redis": redis_pid(url)}
        self.http = httpx.Client(timeout=60)
        self.http.post(f"{self.admin}/_admin/reset").raise_for_status()
        if gateway_latency_ms:  # a real gateway answers in tens of milliseconds
            self.http.post(
                f"{self.admin}/_admin/script", json={"latency_ms": gateway_latency_ms}
            ).raise_for_status()
        self.nodes: list[subprocess.Popen[bytes]] = []

    # shop state, written directly as the tests do (not part of what is measured)
    def seed(self, shop: Shop, shoppers: list[tuple[str, list[str], str]]) -> dict[str, str]:
        now = time.time()
        for start in range(0, len(shop.items), 500):
            ingest.upsert_items(self.rt, shop.items[start : start + 500], now)
        tokens: dict[str, str] = {}
        history: list[dict[str, Any]] = []
        for n, (user, past, _) in enumerate(shoppers):
            token = f"bench-{self.prefix}-{n:07d}-{uuid.uuid4().hex[:6]}"
            register(self.rt, user, "fcm", token, now)
            tokens[token] = user
            history += [
                {"event_id": f"h{n}-{j}", "user_id": user, "type": "purchase", "item_id": item,
                 "ts": now - HISTORY_AGE_S + j}
                for j, item in enumerate(past)
            ]  # fmt: skip
        for start in range(0, len(history), 500):
            ingest.track(self.rt, history[start : start + 500], now, contract.TRACK_BATCH, "seed")
        return tokens

    def start(self, layout: list[Node], tag: str) -> None:
        for n, (queues, concurrency, pool) in enumerate(layout):
            log = (self.tmp / f"{self.prefix}-{tag}-{n}.log").open("wb")
            argv = [
                sys.executable, "-m", "worker", "worker", "--loglevel=WARNING",
                f"--concurrency={concurrency}", f"--pool={pool}",
                f"--name={self.prefix}-{tag}{n}@%h",
                "--queues=" + ",".join(self.queues[q] for q in queues),
            ]  # fmt: skip
            if self.profile is not None:  # sampled with its pool children, collapsed stacks
                out = self.profile / f"{tag}-node{n}.txt"
                spy = str(Path(sys.executable).parent / "py-spy")
                argv = [spy, "record", "--subprocesses", "--gil", "--nonblocking",
                        "--format", "raw", "--rate", "200", "-o", str(out),
                        "--", *argv]  # fmt: skip
            self.nodes.append(
                subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
            )
        # The scheduler, as in production: it re-sends the deliveries parked for a retry
        # (a gateway timeout under load), so every event ends in a push.
        log = (self.tmp / f"{self.prefix}-{tag}-scheduler.log").open("wb")
        argv = [sys.executable, "-m", "worker", "scheduler", "--loglevel=WARNING"]
        self.nodes.append(
            subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        )

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by the worker nodes (with their pool children), the
        gateway process and redis-server."""
        out = {"workers": 0.0}
        for node in self.nodes:
            try:
                proc = psutil.Process(node.pid)
                for p in [proc, *proc.children(recursive=True)]:
                    t = p.cpu_times()
                    out["workers"] += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        for name, pid in self.others.items():
            if pid is not None:
                t = psutil.Process(pid).cpu_times()
                out[name] = t.user + t.system
        return out

    def check_nodes(self) -> None:
        for node in self.nodes:
            if node.poll() is not None:
                logs = [p.read_text()[-2000:] for p in self.tmp.glob(f"{self.prefix}-*.log")]
                raise RuntimeError(f"worker exited: {logs}")

    def stop(self) -> None:
        for node in self.nodes:
            if "py-spy" in str(node.args[0]):  # stop the worker under it: py-spy then writes
                for child in psutil.Process(node.pid).children():
                    child.terminate()
            else:
                node.terminate()
        for node in self.nodes:
            node.wait(timeout=60)
        self.nodes = []

    def stats(self) -> dict[str, int]:
        raw = self.rt.redis.hgetall(self.rt.keys.rule_stats(RULE))
        return {k: int(v) for k, v in raw.items()}  # type: ignore[union-attr]

    def undelivered(self, events: list[tuple[str, str]]) -> dict[str, int]:
        """Why the messages of these (user, event id) triggers are not delivered: their
        outbox state and last attempt's outcome, counted."""
        reasons: dict[str, int] = defaultdict(int)
        for user, event_id in events:
            mid = message_id(RULE, user, event_id)
            state = self.rt.outbox.state(mid)
            attempts = self.rt.outbox.attempts(mid)
            last = attempts[-1] if attempts else {}
            why = last.get("reason") or last.get("outcome") or last.get("error") or "no attempt"
            reasons[f"{state.get('state', 'no message')}: {why}"] += 1
        return dict(reasons)

    def delivered(self) -> int:
        return int(self.rt.redis.hget(self.rt.keys.rule_stats(RULE), "delivered") or 0)  # type: ignore[arg-type]

    def queue_len(self, queue: str) -> int:
        return int(self.rt.redis.llen(f"{self.prefix}:{self.queues[queue]}"))  # type: ignore[arg-type]

    def wait(
        self,
        progress: Callable[[], int],
        total: int,
        stall_s: float = 30,
        cpu_marks: dict[float, dict[str, float]] | None = None,
    ) -> int:
        """Poll until `progress()` reaches `total` or stops moving for `stall_s`; with
        `cpu_marks`, sample `cpu()` as progress passes 10% and 90% of `total`."""
        last, moved = -1, time.monotonic()
        while (done := progress()) < total:
            self.check_nodes()
            if cpu_marks is not None:
                for share in (0.1, 0.9):
                    if share not in cpu_marks and done >= share * total:
                        cpu_marks[share] = self.cpu()
            if done != last:
                last, moved = done, time.monotonic()
            elif time.monotonic() - moved > stall_s:
                break
            time.sleep(0.05)
        return done

    def receipts(self) -> dict[str, float]:
        """FCM token -> when the gateway accepted its (first) message."""
        rows = self.http.get(f"{self.admin}/_admin/received").json()
        out: dict[str, float] = {}
        for row in rows:
            if row.get("kind") == "message":
                out.setdefault(row["message"]["token"], float(row["at"]))
        return out

    def close(self) -> None:
        self.stop()
        self.client.close()
        self.http.close()
        self.rt.close()
        delete_prefix(self.url, self.prefix)


def redis_pid(url: str) -> int | None:
    """The pid of the redis-server listening on `url`'s port, if it runs here."""
    port = url.rsplit(":", 1)[1].split("/")[0]
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "redis-server" in (proc.info["name"] or "") and (
            port in cmdline or any(arg.endswith(f":{port}") for arg in cmdline)
        ):
            return int(proc.pid)
    return None


def cpu_ms_per_unit(marks: dict[float, dict[str, float]], units: float) -> dict[str, float]:
    """Milliseconds of CPU per unit of work between the 10% and 90% samples."""
    if 0.1 not in marks or 0.9 not in marks:
        return {}
    return {k: 1000 * (marks[0.9][k] - marks[0.1][k]) / units for k in marks[0.9]}


def purchase(user: str, item: str, n: int) -> dict[str, Any]:
    return {"event_id": f"e{n}", "user_id": user, "type": "purchase", "item_id": item, "ts": 0.0}
