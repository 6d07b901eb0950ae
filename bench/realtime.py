"""The real-time path under load: event -> local gateway latency at a steady rate, and the
saturation throughput of events with rule evaluation beside a no-op task, in one run on
one broker (issue 5, "Benchmark"). Prints a table, writes JSON; no timed assertions.

One immediate rule (`post_purchase`, no delay, no holdout, no cooldown, caps out of the
way) runs the whole chain per event: `pushrec.track` (state, trigger) -> `pushrec.fire`
(FAISS neighbours, policy, message) -> `pushrec.deliver` (FCM over HTTP/2) -> the local
FCM gateway of `push.testing`, run in its own process. The index is built from the real
Online Retail log; shoppers are real customers (suffixed, one trigger per shopper) with a
few of their real purchases as history, each with a distinct FCM token so a gateway
receipt maps back to the event that caused it.

Per worker layout (`--layouts`, nodes separated by '/', each `queues:concurrency`):

- latency: warm the workers up, then send `--rate` purchase events/s for `--seconds`,
  paced by absolute deadlines; latency = gateway receipt time (its `at`, time.time() in
  the gateway process) - the event's send stamp taken just before `apply_async`.
- saturation: pre-fill the activity queue with `--saturation` events, start the workers,
  and take events/s between 10% and 90% of the pushes by their gateway receipt times.
- noop: pre-fill `--noop` no-op tasks, start the same nodes on that queue, take tasks/s
  between 10% and 90% drained (as bench/ingest.py).

    PYTHONPATH=. python bench/realtime.py [--runs 3] [--json bench/out/realtime.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import indexing  # noqa: E402
from indexing.pipeline import build_version  # noqa: E402
from tests.redis_server import delete_prefix, redis_server  # noqa: E402
from tests.worker.realtime import register, rule, write_config  # noqa: E402
from worker import contract, ingest  # noqa: E402
from worker.client import PushrecClient  # noqa: E402
from worker.runtime import Runtime  # noqa: E402
from worker.settings import Settings  # noqa: E402

RETAIL = ROOT.parent / "shared" / "data" / "online_retail" / "online_retail.csv.gz"
RULE = "post_purchase"
HISTORY_AGE_S = 2 * 86_400  # history older than trigger_max_age_s: state only, no rule
DEFAULT_LAYOUTS = "activity+push+maintenance:2,activity+maintenance:2/push:1"


# --- the shop: index, catalog, shoppers ----------------------------------------------
class Shop:
    """The Online Retail log converted, an index built and published, and per customer
    the list of (item, ts) purchases in time order."""

    def __init__(self, work: Path) -> None:
        started = time.perf_counter()
        converted = work / "online_retail"
        indexing.convert_online_retail(RETAIL, converted)
        log, _ = indexing.read_events_csv(converted / "events.csv")
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
            for row in csv.DictReader((converted / "items.csv").open(newline=""))
        ]
        purchases: dict[str, list[str]] = defaultdict(list)
        with (converted / "events.csv").open(newline="") as fh:
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
def local_gateway(state_dir: Path) -> Iterator[dict[str, Any]]:
    """`python -m push.testing serve` in its own process; yields its state JSON."""
    process = subprocess.Popen(
        [sys.executable, "-m", "push.testing", "serve", f"--state-dir={state_dir}"],
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
class Case:
    def __init__(
        self, url: str, shop: Shop, gateway: dict[str, Any], config: Path, tmp: Path
    ) -> None:
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

    def start(self, layout: list[tuple[list[str], int]], tag: str) -> None:
        for n, (queues, concurrency) in enumerate(layout):
            log = (self.tmp / f"{self.prefix}-{tag}-{n}.log").open("wb")
            argv = [
                sys.executable, "-m", "worker", "worker", "--loglevel=WARNING",
                f"--concurrency={concurrency}", f"--name={self.prefix}-{tag}{n}@%h",
                "--queues=" + ",".join(self.queues[q] for q in queues),
            ]  # fmt: skip
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
            node.terminate()
        for node in self.nodes:
            node.wait(timeout=30)
        self.nodes = []

    def stats(self) -> dict[str, int]:
        raw = self.rt.redis.hgetall(self.rt.keys.rule_stats(RULE))
        return {k: int(v) for k, v in raw.items()}  # type: ignore[union-attr]

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


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- the three measurements ------------------------------------------------------------
def measure_latency(case: Case, shop: Shop, layout: Any, args: argparse.Namespace) -> dict:
    total = int(args.rate * args.seconds)
    warm = shop.shoppers("w", args.warmup, args.history)
    steady = shop.shoppers("s", total, args.history)
    tokens = case.seed(shop, warm + steady)
    by_user = {user: token for token, user in tokens.items()}
    case.start(layout, "lat")
    for n, (user, _, item) in enumerate(warm):  # loads the index, opens HTTP/2 in each child
        event = purchase(user, item, n)
        event["ts"] = time.time()
        case.client.track(event)
        time.sleep(0.02)
    if case.wait(case.delivered, len(warm), stall_s=60) < len(warm):
        raise RuntimeError("warm-up pushes did not arrive")
    time.sleep(1.0)

    sent: dict[str, float] = {}
    lag: list[float] = []
    cpu0 = case.cpu()
    t0 = time.perf_counter() + 0.05
    for n, (user, _, item) in enumerate(steady):
        due = t0 + n / args.rate
        while (ahead := due - time.perf_counter()) > 0:
            time.sleep(ahead)
        lag.append(time.perf_counter() - due)
        event = purchase(user, item, len(warm) + n)
        event["ts"] = stamp = time.time()
        sent[by_user[user]] = stamp
        case.client.track(event)
    send_s = time.perf_counter() - t0
    case.wait(case.delivered, len(warm) + total, stall_s=15)
    cpu = cpu_ms_per_unit({0.1: cpu0, 0.9: case.cpu()}, total)
    case.stop()
    received = case.receipts()
    latencies = [1000 * (received[t] - s) for t, s in sent.items() if t in received]
    if not latencies:
        raise RuntimeError(f"no push arrived: {case.stats()}")
    return {
        "events": total,
        "delivered": len(latencies),
        "achieved_rate": total / send_s,
        "p50_ms": _pct(latencies, 0.50),
        "p99_ms": _pct(latencies, 0.99),
        "max_ms": max(latencies),
        "pacer_lag_p99_ms": 1000 * _pct(lag, 0.99),
        "cpu_ms_per_event": cpu,
        "rule_stats": case.stats(),
    }


def _between(stamps: list[float], total: int) -> float:
    """Units/s between the 10% and the 90% mark of `total` completions."""
    ordered = sorted(stamps)
    lo, hi = ordered[int(0.1 * total) - 1], ordered[int(0.9 * total) - 1]
    return 0.8 * total / (hi - lo)


def measure_saturation(case: Case, shop: Shop, layout: Any, args: argparse.Namespace) -> dict:
    total = args.saturation
    shoppers = shop.shoppers("x", total, args.history)
    tokens = case.seed(shop, shoppers)
    by_user = {user: token for token, user in tokens.items()}
    now = time.time()
    for n, (user, _, item) in enumerate(shoppers):
        event = purchase(user, item, n)
        event["ts"] = now
        case.client.track(event)
    case.start(layout, "sat")
    started = time.perf_counter()
    marks: dict[float, dict[str, float]] = {}
    done = case.wait(case.delivered, total, cpu_marks=marks)
    elapsed = time.perf_counter() - started
    case.stop()
    received = case.receipts()
    stamps = [received[by_user[user]] for user, _, _ in shoppers if by_user[user] in received]
    if len(stamps) < 0.9 * total:
        raise RuntimeError(f"saturation: {len(stamps)} of {total} pushes: {case.stats()}")
    return {
        "events": total,
        "delivered": len(stamps),
        "events_per_s": _between(stamps, total),
        "wall_s_incl_startup": elapsed,
        "done_by_stats": done,
        "cpu_ms_per_event": cpu_ms_per_unit(marks, 0.8 * total),
        "rule_stats": case.stats(),
    }


def measure_noop(case: Case, shop: Shop, layout: Any, args: argparse.Namespace) -> dict:
    total = args.noop
    for _ in range(total):
        case.client.send(contract.NOOP)
    # the same nodes and concurrency, each consuming the queue the no-ops are on
    case.start([(["activity"], concurrency) for _, concurrency in layout], "noop")
    marks: dict[float, float] = {}
    cpu: dict[float, dict[str, float]] = {}
    deadline = time.monotonic() + 600
    while len(marks) < 3:
        case.check_nodes()
        if time.monotonic() > deadline:
            raise RuntimeError("noop: timed out")
        done = total - case.queue_len("activity")
        for share in (0.1, 0.9, 1.0):
            if share not in marks and done >= share * total:
                marks[share] = time.perf_counter()
                cpu[share] = case.cpu()
        time.sleep(0.01)
    case.stop()
    return {
        "tasks": total,
        "tasks_per_s": 0.8 * total / (marks[0.9] - marks[0.1]),
        "cpu_ms_per_task": cpu_ms_per_unit(cpu, 0.8 * total),
    }


MEASURES = {"latency": measure_latency, "saturation": measure_saturation, "noop": measure_noop}


# --- driver ----------------------------------------------------------------------------
def parse_layout(spec: str) -> list[tuple[list[str], int]]:
    """'activity+maintenance:2/push:1' -> [(['activity', 'maintenance'], 2), (['push'], 1)]"""
    nodes = []
    for node in spec.split("/"):
        queues, _, concurrency = node.partition(":")
        nodes.append((queues.split("+"), int(concurrency or 1)))
    return nodes


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=200.0, help="events/s, latency case")
    parser.add_argument("--seconds", type=float, default=25.0, help="latency case length")
    parser.add_argument("--warmup", type=int, default=40, help="events before the steady run")
    parser.add_argument("--saturation", type=int, default=4000, help="events pre-filled")
    parser.add_argument("--noop", type=int, default=10_000, help="no-op tasks pre-filled")
    parser.add_argument("--history", type=int, default=5, help="past purchases per shopper")
    parser.add_argument("--cases", default="latency,saturation,noop", help="which to run")
    parser.add_argument("--layouts", default=DEFAULT_LAYOUTS, help="comma-separated layouts")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "realtime.json")
    args = parser.parse_args()
    if not RETAIL.exists():
        sys.exit(f"{RETAIL} is needed (the index and the shoppers come from it)")
    layouts = args.layouts.split(",")
    load = [uptime()]

    results: dict[str, dict[str, list[dict]]] = {
        spec: {"latency": [], "saturation": [], "noop": []} for spec in layouts
    }
    with redis_server() as url, tempfile.TemporaryDirectory(prefix="pushrec-rt-") as tmp_name:
        tmp = Path(tmp_name)
        shop = Shop(tmp)
        print(f"index {shop.index} ({shop.setup_s:.0f} s to convert, train, publish)")
        config = write_config(
            tmp / "pushrec.toml",
            [rule(RULE, "post_purchase", delay_s=0, channels=["fcm"])],
            cap_marketing_per_day=1_000_000,
            cap_marketing_per_week=1_000_000,
            cap_total_per_day=1_000_000,
            no_repeat_days=0,
        )
        with local_gateway(tmp / "gateways") as gateway:
            for run in range(args.runs):
                for spec in layouts:
                    layout = parse_layout(spec)
                    row = results[spec]
                    for kind in args.cases.split(","):
                        measure = MEASURES[kind]
                        case = Case(url, shop, gateway, config, tmp)
                        try:
                            row[kind].append(measure(case, shop, layout, args))
                        finally:
                            case.close()
                    last = {k: v[-1] for k, v in row.items() if v}
                    print(f"run {run + 1} {spec:36s} {json.dumps(last, default=str)[:400]}")
                load.append(uptime())

    summary = {spec: summarise(row) for spec, row in results.items()}
    report = {
        "bench": "realtime",
        "machine": {"cpus": os.cpu_count(), "uptime": load},
        "source": "online_retail",
        "index": shop.index,
        "rule": {"kind": "post_purchase", "delay_s": 0, "channel": "fcm (HTTP/2)"},
        "parameters": {k: v for k, v in vars(args).items() if k != "json"},
        "runs": args.runs,
        "layouts": {
            spec: [{"queues": q, "concurrency": c} for q, c in parse_layout(spec)]
            for spec in layouts
        },
        "results": summary,
        "raw": results,
        "targets": {"p99_ms_at_200_per_s": 30, "saturation_vs_noop": 0.5},
    }
    print()
    print(
        f"{'layout (nodes: queues:concurrency)':36s} {'p50 ms':>7s} {'p99 ms':>7s} "
        f"{'max ms':>7s} {'delivered':>14s} {'sat ev/s':>9s} {'noop/s':>7s} {'ratio':>6s}"
    )
    nan = float("nan")
    for spec, s in summary.items():
        print(
            f"{spec:36s} {s.get('latency_p50_ms', nan):7.1f} {s.get('latency_p99_ms', nan):7.1f} "
            f"{s.get('latency_max_ms', nan):7.1f} {s.get('delivered', '-'):>14s} "
            f"{s.get('saturation_events_per_s', nan):9.0f} {s.get('noop_tasks_per_s', nan):7.0f} "
            f"{s.get('saturation_vs_noop', nan):6.2f}"
        )
    print("\nCPU ms per unit of work (medians; saturation and noop between the 10% and 90% marks):")
    for spec, s in summary.items():
        for key in (
            "latency_cpu_ms_per_event",
            "saturation_cpu_ms_per_event",
            "noop_cpu_ms_per_task",
        ):
            if key in s:
                print(f"{spec:36s} {key:28s} {s[key]}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nload: {load[0]} .. {load[-1]}\nwrote {args.json}")


def summarise(row: dict[str, list[dict]]) -> dict[str, Any]:
    """Medians over the runs of each case that ran."""
    med = statistics.median
    lat, sat, noop = row["latency"], row["saturation"], row["noop"]
    out: dict[str, Any] = {"runs": {}}
    if lat:
        out |= {
            "latency_p50_ms": med(r["p50_ms"] for r in lat),
            "latency_p99_ms": med(r["p99_ms"] for r in lat),
            "latency_max_ms": med(r["max_ms"] for r in lat),
            "delivered": "/".join(str(r["delivered"]) for r in lat) + f" of {lat[0]['events']}",
            "achieved_rate": med(r["achieved_rate"] for r in lat),
            "latency_cpu_ms_per_event": _median_dict([r["cpu_ms_per_event"] for r in lat]),
        }
        out["runs"]["p99_ms"] = [round(r["p99_ms"], 1) for r in lat]
    if sat:
        out["saturation_events_per_s"] = med(r["events_per_s"] for r in sat)
        out["saturation_cpu_ms_per_event"] = _median_dict([r["cpu_ms_per_event"] for r in sat])
        out["runs"]["saturation_events_per_s"] = [round(r["events_per_s"], 1) for r in sat]
    if noop:
        out["noop_tasks_per_s"] = med(r["tasks_per_s"] for r in noop)
        out["noop_cpu_ms_per_task"] = _median_dict([r["cpu_ms_per_task"] for r in noop])
        out["runs"]["noop_tasks_per_s"] = [round(r["tasks_per_s"], 1) for r in noop]
    if sat and noop:
        out["saturation_vs_noop"] = out["saturation_events_per_s"] / out["noop_tasks_per_s"]
    out["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return out


def _median_dict(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = set().union(*rows) if rows else set()
    return {k: round(statistics.median(r[k] for r in rows if k in r), 3) for k in sorted(keys)}


if __name__ == "__main__":
    main()
