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

Per worker layout (`--layouts`, nodes separated by '/', each `queues:concurrency[:pool]`;
`--gateway-latency-ms` slows the gateway down to a real one's answer time):

- latency: warm the workers up, then send `--rate` purchase events/s for `--seconds`,
  paced by absolute deadlines; latency = gateway receipt time (its `at`, time.time() in
  the gateway process) - the event's send stamp taken just before `apply_async`.
- saturation: pre-fill the activity queue with `--saturation` events, one `pushrec.track`
  task each, start the workers, and take events/s between 10% and 90% of the pushes by
  their gateway receipt times.
- saturation_batched: the same with `--saturation-batched` events sent as
  `pushrec.track_batch` calls of `--batch` events (fired together, delivered in shared
  deliver tasks).
- noop: pre-fill `--noop` no-op tasks, start the same nodes on that queue, take tasks/s
  between 10% and 90% drained (as bench/ingest.py).

    PYTHONPATH=. python bench/realtime.py [--runs 3] [--json bench/out/realtime.json]
    PYTHONPATH=. python bench/realtime.py --cases latency --rate 50 --runs 1   # below capacity

The stack itself (shop, gateway process, cases, CPU sampling) is in realtime_stack.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from realtime_stack import (  # noqa: E402  (bench/ is on the path: run as a script)
    RETAIL,
    RULE,
    Case,
    Node,
    Shop,
    cpu_ms_per_unit,
    local_gateway,
    purchase,
)

from tests.redis_server import redis_server  # noqa: E402
from tests.worker.realtime import rule, write_config  # noqa: E402
from worker import contract  # noqa: E402

DEFAULT_LAYOUTS = "activity+push+maintenance:2,activity+maintenance:2/push:1"


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


def measure_saturation(
    case: Case, shop: Shop, layout: Any, args: argparse.Namespace, batch: int = 1
) -> dict:
    """`batch` 1: one `pushrec.track` per event; above 1: `pushrec.track_batch` calls of
    `batch` events (how a busy shop's backend sends them)."""
    total = args.saturation if batch == 1 else args.saturation_batched
    shoppers = shop.shoppers("x", total, args.history)
    tokens = case.seed(shop, shoppers)
    by_user = {user: token for token, user in tokens.items()}
    now = time.time()
    events = []
    for n, (user, _, item) in enumerate(shoppers):
        event = purchase(user, item, n)
        event["ts"] = now
        events.append(event)
    if batch == 1:
        for event in events:
            case.client.track(event)
    else:
        for start in range(0, total, batch):
            case.client.track_batch(events[start : start + batch])
    case.start(layout, "sat" if batch == 1 else "batched")
    started = time.perf_counter()
    marks: dict[float, dict[str, float]] = {}
    done = case.wait(case.delivered, total, cpu_marks=marks)
    elapsed = time.perf_counter() - started
    case.stop()
    received = case.receipts()
    stamps = [received[by_user[user]] for user, _, _ in shoppers if by_user[user] in received]
    missing = [(u, f"e{n}") for n, (u, _, _) in enumerate(shoppers) if by_user[u] not in received]
    if len(stamps) < 0.9 * total:
        raise RuntimeError(f"saturation: {len(stamps)} of {total} pushes: {case.stats()}")
    return {
        "events": total,
        "events_per_call": batch,
        "delivered": len(stamps),
        "events_per_s": _between(stamps, total),
        "wall_s_incl_startup": elapsed,
        "done_by_stats": done,
        "cpu_ms_per_event": cpu_ms_per_unit(marks, 0.8 * total),
        "rule_stats": case.stats(),
        "undelivered": case.undelivered(missing),
    }


def measure_noop(case: Case, shop: Shop, layout: Any, args: argparse.Namespace) -> dict:
    total = args.noop
    for _ in range(total):
        case.client.send(contract.NOOP)
    # the same nodes and concurrency, each consuming the queue the no-ops are on
    case.start([(["activity"], concurrency, pool) for _, concurrency, pool in layout], "noop")
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


def measure_saturation_batched(
    case: Case, shop: Shop, layout: Any, args: argparse.Namespace
) -> dict:
    return measure_saturation(case, shop, layout, args, batch=args.batch)


MEASURES = {
    "latency": measure_latency,
    "saturation": measure_saturation,
    "saturation_batched": measure_saturation_batched,
    "noop": measure_noop,
}


# --- driver ----------------------------------------------------------------------------
def parse_layout(spec: str) -> list[Node]:
    """'activity+maintenance:2/push:16:threads' ->
    [(['activity', 'maintenance'], 2, 'prefork'), (['push'], 16, 'threads')]"""
    nodes = []
    for node in spec.split("/"):
        queues, concurrency, pool, *_ = [*node.split(":"), "", ""]
        nodes.append((queues.split("+"), int(concurrency or 1), pool or "prefork"))
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
    parser.add_argument(
        "--saturation-batched", type=int, default=20_000, help="events pre-filled in batches"
    )
    parser.add_argument("--batch", type=int, default=100, help="events per track_batch call")
    parser.add_argument("--noop", type=int, default=10_000, help="no-op tasks pre-filled")
    parser.add_argument("--history", type=int, default=5, help="past purchases per shopper")
    parser.add_argument(
        "--cases", default="latency,saturation,saturation_batched,noop", help="which to run"
    )
    parser.add_argument("--layouts", default=DEFAULT_LAYOUTS, help="see the docstring")
    parser.add_argument(
        "--gateway-latency-ms", type=float, default=0.0, help="injected per gateway request"
    )
    parser.add_argument(
        "--profile", type=Path, help="folder for py-spy collapsed stacks of the worker nodes"
    )
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "realtime.json")
    args = parser.parse_args()
    if not RETAIL.exists():
        sys.exit(f"{RETAIL} is needed (the index and the shoppers come from it)")
    layouts = args.layouts.split(",")
    load = [uptime()]

    results: dict[str, dict[str, list[dict]]] = {
        spec: {kind: [] for kind in MEASURES} for spec in layouts
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
                        case = Case(
                            url, shop, gateway, config, tmp, args.gateway_latency_ms, args.profile
                        )
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
        "parameters": {k: v for k, v in vars(args).items() if k not in ("json", "profile")},
        "runs": args.runs,
        "layouts": {
            spec: [{"queues": q, "concurrency": c, "pool": p} for q, c, p in parse_layout(spec)]
            for spec in layouts
        },
        "results": summary,
        "raw": results,
        "targets": {
            "p99_ms_at_200_per_s": 30,
            "saturation_vs_noop": 0.5,
            "note": "saturation_vs_noop: one track task per event; batched_vs_noop: "
            "events in track_batch calls of batch_events_per_call, against no-op tasks/s",
        },
    }
    print()
    print(
        f"{'layout (nodes: queues:concurrency)':36s} {'p50 ms':>7s} {'p99 ms':>7s} "
        f"{'max ms':>7s} {'delivered':>14s} {'sat ev/s':>9s} {'noop/s':>7s} {'ratio':>6s} "
        f"{'batched ev/s':>12s} {'ratio':>6s}"
    )
    nan = float("nan")
    for spec, s in summary.items():
        print(
            f"{spec:36s} {s.get('latency_p50_ms', nan):7.1f} {s.get('latency_p99_ms', nan):7.1f} "
            f"{s.get('latency_max_ms', nan):7.1f} {s.get('delivered', '-'):>14s} "
            f"{s.get('saturation_events_per_s', nan):9.0f} {s.get('noop_tasks_per_s', nan):7.0f} "
            f"{s.get('saturation_vs_noop', nan):6.2f} "
            f"{s.get('batched_events_per_s', nan):12.0f} {s.get('batched_vs_noop', nan):6.2f}"
        )
    print("\nCPU ms per unit of work (medians; saturation and noop between the 10% and 90% marks):")
    for spec, s in summary.items():
        for key in (
            "latency_cpu_ms_per_event",
            "saturation_cpu_ms_per_event",
            "batched_cpu_ms_per_event",
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
    batched = row["saturation_batched"]
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
    if batched:
        out["batched_events_per_call"] = batched[0]["events_per_call"]
        out["batched_events_per_s"] = med(r["events_per_s"] for r in batched)
        out["batched_cpu_ms_per_event"] = _median_dict([r["cpu_ms_per_event"] for r in batched])
        out["runs"]["batched_events_per_s"] = [round(r["events_per_s"], 1) for r in batched]
    if sat and noop:
        out["saturation_vs_noop"] = out["saturation_events_per_s"] / out["noop_tasks_per_s"]
    if batched and noop:
        out["batched_vs_noop"] = out["batched_events_per_s"] / out["noop_tasks_per_s"]
    out["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return out


def _median_dict(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = set().union(*rows) if rows else set()
    return {k: round(statistics.median(r[k] for r in rows if k in r), 3) for k in sorted(keys)}


if __name__ == "__main__":
    main()
