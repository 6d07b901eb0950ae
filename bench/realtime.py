"""The real-time path under load: event -> local gateway latency at a steady rate, and the
saturation throughput of events with rule evaluation beside a no-op task, in one run on
one broker (issue 5, "Benchmark"). Prints a table, writes JSON; no timed assertions.

One immediate rule (`post_purchase`, no delay, no holdout, no cooldown, caps and the
per-credential send rate out of the way) runs the whole chain per event: `pushrec.track`
(state, trigger) -> fire (FAISS neighbours, policy, message) -> delivery (FCM over
HTTP/1.1; in the track task on a node that also consumes the push queue, else a
`pushrec.deliver` task) -> the local FCM gateway of `push.testing`, run in its own
process. The index is built from the real
Online Retail log; shoppers are real customers (suffixed, one trigger per shopper) with a
few of their real purchases as history, each with a distinct FCM token so a gateway
receipt maps back to the event that caused it.

Per worker layout (`--layouts`, nodes separated by '/', each `queues:concurrency[:pool]`;
`--gateway-latency-ms` slows the gateway down to a real one's answer time):

- latency: warm the workers up, then send purchase events for `--seconds` at
  `--rate-share` of the run's single-track saturation rate (or `--rate` events/s),
  paced by absolute deadlines; latency = gateway receipt time (its `at`, time.time() in
  the gateway process) - the event's send stamp taken just before `apply_async`.
- saturation: pre-fill the activity queue with `--saturation` events, one `pushrec.track`
  task each, start the workers, and take events/s between 10% and 90% of the pushes by
  their gateway receipt times.
- saturation_batched: the same with `--saturation-batched` events sent as
  `pushrec.track_batch` calls of `--batch` events (fired together, delivered in shared
  deliver tasks).
- noop_latency: no-op tasks at the latency case's rate on the same nodes; round trip =
  the worker's `date_done` in the result backend - the send stamp.
- noop: pre-fill `--noop` no-op tasks, start the same nodes on that queue, take tasks/s
  between 10% and 90% drained (as bench/ingest.py).

    PYTHONPATH=. python bench/realtime.py [--runs 3] [--json bench/out/realtime.json]
    PYTHONPATH=. python bench/realtime.py --cases latency --rate 50 --rate-share 0 --runs 1

Issue 13's measures are ratios to the no-op task of the same run (`RATIOS`), printed
last with their targets: machine speed cancels out of them, not out of absolute figures.
The no-op runs twice a run, after the single events' saturation and after the batched
one, and each ratio takes the no-op measured nearest in time to its measure: this
machine's speed drifts within minutes (a no-op task 0.86, 1.13 and 1.29 ms in three
runs of one hour of 2026-12-05), and the default order used to put the single events'
saturation three cases before the no-op.

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
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery import Celery

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from realtime_stack import (  # noqa: E402  (bench/ is on the path: run as a script)
    Case,
    Node,
    Shop,
    cpu_ms_per_unit,
    local_gateway,
    purchase,
    write_bench_config,
)

from tests.redis_server import redis_server  # noqa: E402
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


def measure_noop_latency(case: Case, shop: Shop, layout: Any, args: argparse.Namespace) -> dict:
    """No-op tasks at the latency case's rate on the same nodes: the round trip a Celery
    task costs here (send stamp -> the worker's `date_done` in the result backend), the
    floor under the event -> gateway latency."""
    total = int(args.rate * args.seconds)
    app = Celery("bench-noop", set_as_current=False)
    app.conf.update(
        broker_url=contract.celery_url(case.url),
        broker_transport_options={"global_keyprefix": f"{case.prefix}:"},
        task_serializer="json",
    )
    queue = case.queues["activity"]

    def send() -> str:
        return str(app.send_task(contract.NOOP, kwargs={}, queue=queue, ignore_result=False).id)

    def finished(task_ids: Collection[str]) -> dict[str, float]:
        """When each task finished (the worker's `date_done`), waiting up to a minute."""
        deadline = time.monotonic() + 60
        done: dict[str, float] = {}
        while len(done) < len(task_ids) and time.monotonic() < deadline:
            for task_id in [t for t in task_ids if t not in done]:
                raw = case.rt.redis.get(f"{case.prefix}:celery-task-meta-{task_id}")
                if raw:
                    at = datetime.fromisoformat(json.loads(raw)["date_done"]).timestamp()
                    done[task_id] = at
            time.sleep(0.2)
        return done

    case.start([(["activity"], concurrency, pool) for _, concurrency, pool in layout], "nooplat")
    warm = []
    for _ in range(args.warmup):
        warm.append(send())
        time.sleep(0.02)
    # the workers may still be starting: a warm-up left queued would delay the first
    # timed tasks (their round trips fell from ~0.4 s over the first 30 on a slow machine)
    if len(finished(warm)) < len(warm):
        raise RuntimeError("warm-up no-op tasks did not finish")
    time.sleep(1.0)
    sent: dict[str, float] = {}
    t0 = time.perf_counter() + 0.05
    for n in range(total):
        due = t0 + n / args.rate
        while (ahead := due - time.perf_counter()) > 0:
            time.sleep(ahead)
        stamp = time.time()
        sent[send()] = stamp
    done = finished(sent)
    case.stop()
    app.close()
    latencies = [1000 * (done[t] - s) for t, s in sent.items() if t in done]
    if not latencies:
        raise RuntimeError("no no-op result arrived")
    return {
        "tasks": total,
        "done": len(latencies),
        "rate": args.rate,
        "p50_ms": _pct(latencies, 0.50),
        "p99_ms": _pct(latencies, 0.99),
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
    "noop_latency": measure_noop_latency,
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
    parser.add_argument(
        "--rate-share",
        type=float,
        default=0.5,
        help="pace latency and noop_latency at this share of the run's single-track "
        "saturation rate when saturation runs first (0: always --rate)",
    )
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
        "--cases",
        default="saturation,noop,latency,noop_latency,saturation_batched,noop",
        help="which to run, in order (a case may run twice: a ratio takes the no-op "
        "measured nearest in time to its measure)",
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
    layouts = args.layouts.split(",")
    load = [uptime()]

    results: dict[str, dict[str, list[dict]]] = {
        spec: {kind: [] for kind in MEASURES} for spec in layouts
    }
    with redis_server() as url, tempfile.TemporaryDirectory(prefix="pushrec-rt-") as tmp_name:
        tmp = Path(tmp_name)
        shop = Shop(tmp)
        print(f"index {shop.index} ({shop.setup_s:.0f} s to convert, train, publish)")
        config = write_bench_config(tmp / "pushrec.toml")
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
                        started = time.time()
                        try:
                            result = measure(case, shop, layout, paced(args, row, run))
                        finally:
                            case.close()
                        result["run"] = run  # `ratios` pairs by these two
                        result["at"] = (started + time.time()) / 2
                        row[kind].append(result)
                    last = {k: v[-1] for k, v in row.items() if v}
                    print(f"run {run + 1} {spec:36s} {json.dumps(last, default=str)[:400]}")
                load.append(uptime())

    summary = {spec: summarise(row) for spec, row in results.items()}
    report = {
        "bench": "realtime",
        "machine": {"cpus": os.cpu_count(), "uptime": load},
        "source": shop.source,
        "index": shop.index,
        "rule": {"kind": "post_purchase", "delay_s": 0, "channel": "fcm (HTTP/1.1, push.h1)"},
        "parameters": {k: v for k, v in vars(args).items() if k not in ("json", "profile")},
        "runs": args.runs,
        "layouts": {
            spec: [{"queues": q, "concurrency": c, "pool": p} for q, c, p in parse_layout(spec)]
            for spec in layouts
        },
        "results": summary,
        "raw": results,
        "targets": {name: f"{'<=' if lower else '>='} {t}" for name, _, _, t, lower in RATIOS},
    }
    print()
    print(
        f"{'layout (nodes: queues:concurrency)':36s} {'p50 ms':>7s} {'p99 ms':>7s} "
        f"{'max ms':>7s} {'noop p99':>8s} {'delivered':>14s} {'sat ev/s':>9s} "
        f"{'batched ev/s':>12s} {'noop/s':>7s}"
    )
    nan = float("nan")
    for spec, s in summary.items():
        print(
            f"{spec:36s} {s.get('latency_p50_ms', nan):7.1f} {s.get('latency_p99_ms', nan):7.1f} "
            f"{s.get('latency_max_ms', nan):7.1f} {s.get('noop_latency_p99_ms', nan):8.1f} "
            f"{s.get('delivered', '-'):>14s} {s.get('saturation_events_per_s', nan):9.0f} "
            f"{s.get('batched_events_per_s', nan):12.0f} {s.get('noop_tasks_per_s', nan):7.0f}"
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
    print("\nRatios to the no-op task of the same run (median of the runs; each run):")
    for spec, s in summary.items():
        for name, r in s["ratios"].items():
            print(f"{spec:36s} {name:22s} {r['median']:7.3f}  target {r['target']:8s} "
                  f"{'met' if r['met'] else 'NOT met':8s} {r['runs']}")  # fmt: skip
    print("\nYardsticks, not targets: workers' CPU an event / the gateway's, same case:")
    for spec, s in summary.items():
        for name, r in s["yardsticks"].items():
            print(f"{spec:36s} {name:22s} {r['median']:7.3f}  {r['runs']}")
    print("\nBounds: the cores' busy share in each saturation case, and the rate its CPU an")
    print("event (workers, Redis, gateway) would reach with every core busy / the no-op rate,")
    print("and without the local gateway's CPU (a real gateway's is not on these cores):")
    for spec, s in summary.items():
        for name, r in s["bounds"].items():
            print(f"{spec:36s} {name:22s} {r['median']:7.3f}  {r['runs']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nload: {load[0]} .. {load[-1]}\nwrote {args.json}")


def paced(args: argparse.Namespace, row: dict[str, list[dict]], run: int) -> argparse.Namespace:
    """`args`, with the paced cases' rate at `--rate-share` of this run's single-`track`
    saturation rate when one was measured before them."""
    if args.rate_share <= 0 or len(row["saturation"]) <= run:
        return args
    return argparse.Namespace(
        **{**vars(args), "rate": args.rate_share * row["saturation"][run]["events_per_s"]}
    )


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
        # each no-op measured, in order (the default cases measure it twice a run)
        out["runs"]["noop_tasks_per_s"] = [round(r["tasks_per_s"], 1) for r in noop]
    if batched:
        out["batched_events_per_call"] = batched[0]["events_per_call"]
        out["batched_events_per_s"] = med(r["events_per_s"] for r in batched)
        out["batched_cpu_ms_per_event"] = _median_dict([r["cpu_ms_per_event"] for r in batched])
        out["runs"]["batched_events_per_s"] = [round(r["events_per_s"], 1) for r in batched]
    if noop_lat := row["noop_latency"]:
        out["noop_latency_p50_ms"] = med(r["p50_ms"] for r in noop_lat)
        out["noop_latency_p99_ms"] = med(r["p99_ms"] for r in noop_lat)
        out["runs"]["noop_p99_ms"] = [round(r["p99_ms"], 1) for r in noop_lat]
    out["ratios"] = ratios(row)
    out["yardsticks"] = yardsticks(row)
    out["bounds"] = bounds(row, os.cpu_count() or 1)
    out["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return out


# Issue 13's measures, each a ratio to the no-op task of the same run: (name, the case
# and the field on top, the case and the field below, the target, whether lower is better)
RATIOS: tuple[tuple[str, tuple[str, str], tuple[str, str], float, bool], ...] = (
    ("single_cpu_vs_noop", ("saturation", "cpu:workers"), ("noop", "cpu:workers"), 4.0, True),
    ("single_rate_vs_noop", ("saturation", "events_per_s"), ("noop", "tasks_per_s"), 0.3, False),
    ("batched_cpu_vs_noop", ("saturation_batched", "cpu:workers"), ("noop", "cpu:workers"),
     1.0, True),
    ("batched_rate_vs_noop", ("saturation_batched", "events_per_s"), ("noop", "tasks_per_s"),
     1.5, False),
    ("p99_vs_noop_p99", ("latency", "p99_ms"), ("noop_latency", "p99_ms"), 5.0, True),
)  # fmt: skip


# Not the issue's measures: the workers' CPU an event over the local gateway's in the same
# case (the same seconds, one request an event). The gateway is the same code on both
# sides of a comparison, so the ratio follows a change of ours while the machine's speed
# drifts faster than the no-op measured minutes apart can follow (docs/realtime.md).
YARDSTICKS: tuple[tuple[str, str, str, str], ...] = (
    ("single_cpu_vs_gateway", "saturation", "cpu:workers", "cpu:gateway"),
    ("batched_cpu_vs_gateway", "saturation_batched", "cpu:workers", "cpu:gateway"),
)


def _cpu(result: dict) -> dict[str, float]:
    """A measurement's CPU milliseconds a unit of work, by process group (workers, redis,
    gateway)."""
    return result.get("cpu_ms_per_event") or result.get("cpu_ms_per_task") or {}


def _field(result: dict, name: str) -> float:
    if name.startswith("cpu:"):
        return float(_cpu(result).get(name.removeprefix("cpu:"), float("nan")))
    return float(result[name])


def _spread(values: list[float]) -> dict[str, Any]:
    """The median of `values` and each of them, rounded."""
    return {"median": round(statistics.median(values), 3), "runs": [round(v, 3) for v in values]}


def yardsticks(row: dict[str, list[dict]]) -> dict[str, dict[str, Any]]:
    """Each of `YARDSTICKS` per measurement, and their median."""
    out: dict[str, dict[str, Any]] = {}
    for name, case, top, bottom in YARDSTICKS:
        runs = [_field(r, top) / _field(r, bottom) for r in row[case] if _field(r, bottom) > 0]
        if runs:
            out[name] = _spread(runs)
    return out


def bounds(row: dict[str, list[dict]], cpus: int) -> dict[str, dict[str, Any]]:
    """Per saturation case (and the no-op): the share of the machine's cores it kept busy
    (all its CPU a unit, workers', Redis's and the gateway's, times its rate), and, over
    the nearest no-op's rate, the rate that CPU a unit would reach with every core busy:
    the most a change to our CPU alone could give that ratio; and the same without the
    gateway's CPU (`..._without_gateway_...`: it shares the cores here, a real one's
    does not), an estimate of the rate a shop's own cores would allow."""
    out: dict[str, dict[str, Any]] = {}
    cases = (("saturation", "single", "events_per_s"),
             ("saturation_batched", "batched", "events_per_s"),
             ("noop", "noop", "tasks_per_s"))  # fmt: skip
    for case, short, rate in cases:
        measured = [(r, total) for r in row[case] if (total := sum(_cpu(r).values())) > 0]
        if busy := [total * r[rate] / 1000 / cpus for r, total in measured]:
            out[f"{short}_cores_busy"] = _spread(busy)
        if case == "noop":
            continue
        nearest = [(r, _nearest(r, row["noop"])) for r, _ in measured]
        for name, left_out in (("", ()), ("_without_gateway", ("gateway",))):
            if ceiling := [
                cpus * 1000 / sum(ms for who, ms in _cpu(r).items() if who not in left_out)
                / n["tasks_per_s"]
                for r, n in nearest if n
            ]:  # fmt: skip
                out[f"{short}_rate_bound{name}_vs_noop"] = _spread(ceiling)
    return out


def _nearest(result: dict, others: list[dict]) -> dict | None:
    """The one of `others` of `result`'s run measured nearest in time to it (`run` and
    `at`, set by `main`), if any."""
    same_run = [o for o in others if o["run"] == result["run"]]
    return min(same_run, key=lambda o: abs(o["at"] - result["at"]), default=None)


def ratios(row: dict[str, list[dict]]) -> dict[str, dict[str, Any]]:
    """Each of `RATIOS` per measurement on top, over the measurement below taken nearest
    in time to it in the same run, and their median."""
    out: dict[str, dict[str, Any]] = {}
    for name, (top_case, top), (bottom_case, bottom), target, lower in RATIOS:
        pairs = [(t, _nearest(t, row[bottom_case])) for t in row[top_case]]
        runs = [_field(t, top) / _field(b, bottom) for t, b in pairs if b is not None]
        if runs:
            median = statistics.median(runs)
            met = median <= target if lower else median >= target
            out[name] = {**_spread(runs), "target": f"{'<=' if lower else '>='} {target}",
                         "met": met}  # fmt: skip
    return out


def _median_dict(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = set().union(*rows) if rows else set()
    return {k: round(statistics.median(r[k] for r in rows if k in r), 3) for k in sorted(keys)}


if __name__ == "__main__":
    main()
