"""One event's cost per stage, in this process: Redis round trips, Redis commands and CPU
milliseconds for `track` (state, trigger, the immediate rule fired inline) and `deliver`
(send-time re-check, claim, one FCM send over HTTP/1.1, settle), without Celery around
them (its share is the no-op task of bench/realtime.py), under the worker's garbage
collector settings (`tune_gc`: without them a full collection of the start-up heap took
about a tenth of the measured CPU). The profile-and-cut loop of issue 13 runs on this;
bench/realtime.py measures the whole worker.

The shop is bench/realtime.py's (the Online Retail index, catalog and shoppers, the
post_purchase rule, the local FCM gateway in its own process, so its CPU is not ours).
Events go one `track` per event, or `track_batch` calls of `--batch` events with one
deliver call per batch, as a worker runs them. Round trips are counted at redis-py's
connections, sync and asyncio (`send_packed_command`: one per command or pipeline),
commands by the server's `INFO commandstats` (those inside Lua scripts included).

    PYTHONPATH=. python bench/hot_path.py [--events 400] [--batch 100] [--json OUT]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import redis
import redis.asyncio.connection

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from function_clock import FunctionClock  # noqa: E402
from realtime_stack import (  # noqa: E402
    RULE,
    Shop,
    local_gateway,
    purchase,
    write_bench_config,
)
from server_clock import ServerClock  # noqa: E402

from tests.redis_server import redis_server  # noqa: E402
from tests.worker.realtime import register  # noqa: E402
from worker.cli.serve import tune_gc, tune_malloc  # noqa: E402
from worker.delivery.requests import DeliveryRequest  # noqa: E402
from worker.service import ingest  # noqa: E402
from worker.service.runtime import Runtime  # noqa: E402
from worker.settings import Settings  # noqa: E402


class RoundTrips:
    """Counts redis-py's sends (one per command or pipeline) while installed: the state
    store's, and the asyncio client's of delivery (rate limit, breaker)."""

    def __init__(self) -> None:
        self.count = 0

    @contextmanager
    def installed(self) -> Iterator[None]:
        cls = redis.connection.AbstractConnection
        original = cls.send_packed_command
        acls = redis.asyncio.connection.AbstractConnection
        aoriginal = acls.send_packed_command

        def counted(conn: Any, command: Any, check_health: bool = True) -> None:
            self.count += 1
            original(conn, command, check_health)

        async def acounted(conn: Any, command: Any, check_health: bool = True) -> None:
            self.count += 1
            await aoriginal(conn, command, check_health)

        cls.send_packed_command = counted  # type: ignore[method-assign]
        acls.send_packed_command = acounted  # type: ignore[method-assign]
        try:
            yield
        finally:
            cls.send_packed_command = original  # type: ignore[method-assign]
            acls.send_packed_command = aoriginal  # type: ignore[method-assign]


class Stage:
    """CPU seconds, round trips and server commands spent in one stage, summed."""

    def __init__(
        self,
        name: str,
        probe: redis.Redis,
        trips: RoundTrips,
        profiler: cProfile.Profile | None = None,
        clock: FunctionClock | None = None,
        server: ServerClock | None = None,
    ) -> None:
        self.name, self._probe, self._trips, self._profiler = name, probe, trips, profiler
        self._clock, self._server = clock, server
        self.cpu_s = 0.0
        self.round_trips = 0
        self.commands = 0
        self.by_command: Counter[str] = Counter()
        self.server_us: Counter[str] = Counter()  # with `server`: by command and script
        self.server_calls: Counter[str] = Counter()

    def _commands(self) -> Counter[str]:
        """The server's calls so far by command (Lua's included), one INFO."""
        stats = self._probe.info("commandstats")
        return Counter(
            {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}
        )

    def run(self, work: Callable[[], Any]) -> Any:
        if self._server is not None:  # its commands neither counted nor timed
            self._server.start()
        commands, trips = self._commands(), self._trips.count
        started = time.process_time()
        if self._profiler is not None:
            self._profiler.enable()
        with self._clock.timing() if self._clock else nullcontext():
            out = work()
        if self._profiler is not None:
            self._profiler.disable()
        self.cpu_s += time.process_time() - started
        self.round_trips += self._trips.count - trips
        spent = self._commands() - commands
        spent["info"] -= 1  # the INFO above
        self.by_command.update(+spent)
        self.commands += spent.total()
        if self._server is not None:
            us, calls = self._server.take()
            self.server_us.update(us)
            self.server_calls.update(calls)
        return out

    def per(self, events: int) -> dict[str, Any]:
        out = {
            "cpu_ms": round(1000 * self.cpu_s / events, 3),
            "round_trips": round(self.round_trips / events, 2),
            "commands": round(self.commands / events, 2),
            "by_command": {name: round(n / events, 2) for name, n in self.by_command.most_common()},
        }
        if self._server is not None:
            out["server_us"] = round(self.server_us.total() / events, 1)
            out["by_server"] = {
                name: {
                    "us": round(us / events, 2),
                    "calls": round(self.server_calls[name] / events, 2),
                }
                for name, us in self.server_us.most_common()
            }
        return out


STAGES = ("track", "deliver", "total")  # what `run_once` reports, the total last


def delivered(rt: Runtime) -> int:
    return int(rt.redis.hget(rt.keys.rule_stats(RULE), "delivered") or 0)  # type: ignore[arg-type]


def _track(rt: Runtime, events: list[dict[str, Any]], task_id: str) -> Any:
    if len(events) == 1:
        return ingest.track_one(rt, events[0], time.time(), task_id)
    return ingest.track_batch(rt, events, time.time(), task_id)


def run_once(
    rt: Runtime,
    sent: list[dict[str, Any]],
    shop: Shop,
    events: int,
    batch: int,
    tag: str,
    profiler: cProfile.Profile | None = None,
    clock: FunctionClock | None = None,
    slowlog: bool = False,
) -> dict[str, Any]:
    """`events` purchases of fresh shoppers (each with a device and a history), in calls of
    `batch`; returns the cost per event of each stage, and with `clock` each timed
    function's (`functions`), with `slowlog` the server's time by command (`ServerClock`).
    `sent`: the deliver calls the runtime enqueues."""
    shoppers = shop.shoppers(tag, events, 5)
    now = time.time()
    for n, (user, past, _) in enumerate(shoppers):
        register(rt, user, "fcm", f"hot-path-token-{tag}-{n:07d}", now)
        history = [
            {"event_id": f"h{tag}{n}-{j}", "user_id": user, "type": "purchase", "item_id": item,
             "ts": now - 2 * 86_400 + j}
            for j, item in enumerate(past)
        ]  # fmt: skip
        ingest.track(rt, history, now, "pushrec.track_batch", f"seed-{tag}-{n}")
    delivered_before = delivered(rt)
    probe = redis.Redis.from_url(rt.settings.redis_url or "")
    trips = RoundTrips()
    server = ServerClock(probe) if slowlog else None
    if server is not None:
        server.enable()
    track = Stage("track", probe, trips, profiler, clock, server)
    deliver = Stage("deliver", probe, trips, profiler, clock, server)
    if clock is not None:
        clock.clear()
    calls = [shoppers[i : i + batch] for i in range(0, events, batch)]
    with trips.installed():
        for c, call in enumerate(calls):
            batch_events = []
            for n, (user, _, item) in enumerate(call):
                event = purchase(user, item, n)
                event["event_id"] = f"{tag}-{c}-{n}"
                event["ts"] = time.time()
                batch_events.append(event)
            sent.clear()
            track.run(partial(_track, rt, batch_events, f"t{tag}{c}"))
            for n, kwargs in enumerate(list(sent)):
                requests = DeliveryRequest.from_kwargs(kwargs)
                deliver.run(
                    partial(rt.sender().deliver_many, requests, time.time(), f"d{tag}{c}-{n}")
                )
    probe.close()
    if (sent_now := delivered(rt)) - delivered_before != events:
        raise RuntimeError(f"{sent_now - delivered_before} of {events} delivered")
    out = {"track": track.per(events), "deliver": deliver.per(events)}
    out["total"] = {
        k: round(out["track"][k] + out["deliver"][k], 3)
        for k in ("cpu_ms", "round_trips", "commands")
    }
    if clock is not None:
        out["functions"] = clock.per(events)
    return out


def _median_of(rows: list[dict[str, Any]], stage: str) -> dict[str, Any]:
    """A stage's figures over the runs: medians, and the last run's commands by name (the
    same every run) and, with `--slowlog`, its server time by name."""
    out = {
        k: statistics.median(r[stage][k] for r in rows)
        for k in ("cpu_ms", "round_trips", "commands")
    }
    for kept in ("by_command", "by_server"):
        if kept in rows[-1][stage]:
            out[kept] = rows[-1][stage][kept]
    if "server_us" in rows[-1][stage]:
        out["server_us"] = statistics.median(r[stage]["server_us"] for r in rows)
    return out


def _median_functions(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each timed function's figures, median over the runs (0 in a run it was not in)."""
    names = {name for r in rows for name in r["functions"]}
    medians = {
        name: {
            k: statistics.median(r["functions"].get(name, {}).get(k, 0.0) for r in rows)
            for k in ("inclusive_us", "exclusive_us", "calls", "commands")
        }
        for name in names
    }
    return dict(sorted(medians.items(), key=lambda kv: -kv[1]["inclusive_us"]))


def print_functions(functions: dict[str, dict[str, float]]) -> None:
    """`--functions`' table: per event, a pipeline's commands at its call site."""
    print(f"    {'function (a pipeline: @ its caller)':50s} {'incl us':>8s} {'excl us':>8s} "
          f"{'calls':>6s} {'commands':>8s}")  # fmt: skip
    for name, v in functions.items():
        commands = f"{v['commands']:8.2f}" if v["commands"] else ""
        print(f"    {name:50s} {v['inclusive_us']:8.1f} {v['exclusive_us']:8.1f} "
              f"{v['calls']:6.2f} {commands}")  # fmt: skip


@contextmanager
def hot_runtime(deliver_inline: bool) -> Iterator[tuple[Runtime, list[dict[str, Any]], Shop]]:
    """The shop, its Redis and local gateway, and a warm runtime on them: (runtime, the
    deliver calls it enqueues, shop)."""
    with redis_server() as url, tempfile.TemporaryDirectory(prefix="pushrec-hot-") as tmp_name:
        tmp = Path(tmp_name)
        shop = Shop(tmp)
        config = write_bench_config(tmp / "pushrec.toml")
        # idle connections kept as FCM's front ends keep them, not hypercorn's 5 s: between
        # `--serve` requests the pool idles while the other checkout measures
        with local_gateway(tmp / "gateways", keep_alive_s=300) as gateway:
            os.environ.update(gateway["env"], PUSHREC_CONFIG=str(config))
            settings = Settings.load(
                redis_url=url,
                key_prefix="hot",
                index_store=shop.store,
                state_dir=tmp / "state",
                deliver_inline=deliver_inline,
            )
            sent: list[dict[str, Any]] = []
            tune_gc()  # the worker's collector settings, set where it sets them: before the runtime
            tune_malloc()
            rt = Runtime.open(settings, enqueue=lambda task, kwargs: sent.append(kwargs))
            try:
                now = time.time()
                for start in range(0, len(shop.items), 500):
                    ingest.upsert_items(rt, shop.items[start : start + 500], now)
                run_once(rt, sent, shop, 20, 1, "warm")  # index loaded, HTTP open, caches filled
                yield rt, sent, shop
            finally:
                rt.close()


def events_per_call(mode: str, batch: int) -> int:
    """`single`: one `track` per event; `batched`: `track_batch` calls of `batch`."""
    return {"single": 1, "batched": batch}[mode]


def serve(rt: Runtime, sent: list[dict[str, Any]], shop: Shop, args: argparse.Namespace) -> None:
    """`--serve`: say `ready`, then for each line `<mode> <tag>` read from stdin measure
    `--events` events and answer with one JSON line of `run_once`'s figures (bench/ab.py
    drives two checkouts this way)."""
    print("ready", flush=True)
    for line in sys.stdin:
        mode, tag = line.split()
        row = run_once(rt, sent, shop, args.events, events_per_call(mode, args.batch), tag)
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=400, help="events per measurement")
    parser.add_argument("--batch", type=int, default=100, help="events per track_batch call")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--modes", default="single,batched", help="which to run")
    parser.add_argument(
        "--deliver-inline",
        action="store_true",
        help="send in the track call, as a worker that also consumes the push queue does",
    )
    parser.add_argument("--cprofile", type=Path, help="write cProfile stats of the runs here")
    parser.add_argument(
        "--commands", action="store_true", help="print each stage's commands per event by name"
    )
    parser.add_argument(
        "--functions",
        action="store_true",
        help="time each stage function and pipeline at every call (bench/function_clock.py)",
    )
    parser.add_argument(
        "--slowlog",
        action="store_true",
        help="the Redis server's time by command and Lua script (bench/server_clock.py)",
    )
    parser.add_argument(
        "--serve", action="store_true", help="measure on request from stdin (see `serve`)"
    )
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "hot_path.json")
    args = parser.parse_args()
    with hot_runtime(args.deliver_inline) as (rt, sent, shop):
        if args.serve:
            serve(rt, sent, shop, args)
            return
        results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in args.modes.split(",")}
        # only the stages' work: not the set-up of each run's shoppers
        profiler = cProfile.Profile(time.process_time) if args.cprofile else None
        clock = FunctionClock() if args.functions else None
        with clock.installed() if clock else nullcontext():
            for run in range(args.runs):
                for mode, rows in results.items():
                    per_call = events_per_call(mode, args.batch)
                    tag = f"{mode}{run}"
                    measured = run_once(
                        rt, sent, shop, args.events, per_call, tag, profiler, clock, args.slowlog
                    )
                    rows.append(measured)
        if profiler is not None:
            profiler.dump_stats(args.cprofile)
    summary: dict[str, dict[str, Any]] = {
        mode: {stage: _median_of(rows, stage) for stage in STAGES} for mode, rows in results.items()
    }
    if args.functions:
        for mode, rows in results.items():
            summary[mode]["functions"] = _median_functions(rows)
    print(f"{'mode':8s} {'stage':8s} {'cpu ms/event':>12s} {'round trips':>12s} {'commands':>9s}")
    for mode, stages in summary.items():
        for stage in STAGES:
            v = stages[stage]
            print(
                f"{mode:8s} {stage:8s} {v['cpu_ms']:12.3f} {v['round_trips']:12.2f} "
                f"{v['commands']:9.2f}"
            )
            if args.commands and "by_command" in v:
                print("    " + ", ".join(f"{c} {n:g}" for c, n in v["by_command"].items()))
            if v.get("by_server"):
                print(f"    server {v['server_us']:.1f} us/event: " + ", ".join(
                    f"{name} {r['us']:g} us ({r['calls']:g} calls)"
                    for name, r in list(v["by_server"].items())[:12]
                ))  # fmt: skip
        if "functions" in stages:
            print_functions(stages["functions"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {"bench": "hot_path", "batch": args.batch, "events": args.events,
              "cpus": os.cpu_count(), "results": summary, "raw": results}  # fmt: skip
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
