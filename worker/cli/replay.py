"""`pushrec demo` (the engine on the shipped sample), `pushrec replay` (on a shop's own
history) and `pushrec replay compare A.json B.json`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from worker.cli.common import fail, load_settings

# Events per wall-clock second the demo feeds: what one worker node with two
# prefork children keeps up with while rules fire, beside Redis, the gateways and the
# feed, on 2 cores (450/s built a backlog in a demo run; a backlog delays every decision).
_RATE = 150.0
_SETUP_S = 45.0  # demo: index, catalog, devices, the past and the processes' start


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="see pushrec work: the shipped Online Retail sample replayed on real workers",
        description="Starts an embedded Redis, the local gateways, a worker and the "
        "scheduler; builds the index from the sample's first months; registers synthetic "
        "devices; replays the later purchases at an accelerated clock; writes an HTML "
        "report. Stops every process it started.",
    )
    demo.add_argument("--minutes", type=float, default=4.0, help="wall-clock budget (default 4)")
    demo.add_argument("--report", type=Path, help="report folder (default: under the state dir)")
    demo.set_defaults(handler=run_demo)

    replay = subparsers.add_parser(
        "replay",
        help="what your rules would do to your shoppers: your history on the real engine",
        description="Replay a canonical events CSV on real workers, the scheduler and local "
        "gateways at an accelerated clock; per rule: pushes per shopper per day, what held "
        "messages back, coupons, hit rate and lift over the holdout. "
        "`pushrec replay compare A.json B.json` sets two runs side by side.",
    )
    replay.add_argument("compare", nargs="*", help="compare A.json B.json")
    replay.add_argument("--events", type=Path, help="canonical events CSV (.gz ok)")
    replay.add_argument("--items", type=Path, help="canonical items CSV")
    replay.add_argument("--config", type=Path, help="TOML config with your [[rules]]")
    pace = replay.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, help="simulated seconds per wall-clock second")
    pace.add_argument(
        "--as-fast-as-possible",
        action="store_true",
        help="move the clock on as soon as the workers have drained what it brought due",
    )
    replay.add_argument("--from", dest="replay_from", help="replay events from TS on (ISO)")
    replay.add_argument("--max-events", type=int, help="replay at most this many events")
    replay.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
        help="override a setting or rules.RULE.FIELD (repeatable)",
    )  # fmt: skip
    replay.add_argument("--report", type=Path, help="report folder")
    replay.add_argument("--json", type=Path, help="write the results as JSON here")
    replay.add_argument(
        "--allow-real-gateways",
        action="store_true",
        help="keep the gateways the config names instead of refusing to start",
    )
    replay.set_defaults(handler=run_replay)


def _run_dir(kind: str) -> Path:
    settings = load_settings()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = settings.state_dir / "runs" / f"{kind}-{stamp}-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _finish(run: Any, results: dict[str, Any], report_dir: Path, json_out: Path | None) -> int:
    from worker.replay.report import summary_table, write_report

    report_dir.mkdir(parents=True, exist_ok=True)
    data = json.dumps(results, indent=2, default=str)
    (report_dir / "results.json").write_text(data)
    if json_out is not None:
        json_out.write_text(data)
    path = write_report(results, report_dir / "report.html")
    print(summary_table(results))
    print(f"report: {path}")
    return 130 if run.interrupted else 0


def run_demo(args: argparse.Namespace) -> int:
    from indexing import parse_ts
    from indexing.sample import sample_files
    from worker.replay.config import DEMO_RULES, load_config, write_config
    from worker.replay.engine import ReplayPlan, replay
    from worker.replay.results import collect
    from worker.replay.stack import interrupts_as_keyboard

    files = sample_files()
    run_dir = _run_dir("demo")
    budget = max(30.0, args.minutes * 60 - _SETUP_S)
    config = write_config(load_config(None, DEMO_RULES), run_dir / "pushrec.toml")
    plan = ReplayPlan(
        events=files.events, items=files.items, shoppers=files.shoppers, config=config,
        run_dir=run_dir, replay_from=parse_ts("2011-03-01T00:00:00"),
        # events for all but the last 20 s (a short run: half), which let delays come due
        max_events=int(max(budget - 20, budget / 2) * _RATE), budget_s=budget,
    )  # fmt: skip
    print(f"pushrec demo: UCI Online Retail sample (CC BY 4.0), run folder {run_dir}")
    with interrupts_as_keyboard():
        run, results = replay(plan, collect=collect)
    results["title"] = "pushrec demo: UCI Online Retail sample"
    return _finish(run, results, args.report or run_dir / "report", None)


def run_replay(args: argparse.Namespace) -> int:
    if args.compare:
        return _compare(args.compare)
    if args.events is None:
        fail("replay needs --events FILE (or: replay compare A.json B.json)")
    from indexing import parse_ts
    from worker.replay.config import ConfigError, apply_overrides, load_config, real_gateways
    from worker.replay.config import write_config as write_toml
    from worker.replay.engine import ReplayPlan, replay
    from worker.replay.results import collect
    from worker.replay.stack import interrupts_as_keyboard

    try:
        config = apply_overrides(load_config(args.config), args.overrides)
    except ConfigError as exc:
        fail(str(exc))
    real = real_gateways(config, dict(os.environ))
    extra_env: dict[str, str] = {}
    if real and not args.allow_real_gateways:
        fail(
            "a replay sends only to local gateways, but real ones are configured: "
            + ", ".join(real)
            + " (remove them, or pass --allow-real-gateways to keep them)"
        )
    if real:
        extra_env = {k: v for k, v in os.environ.items() if k in set(real)}
    run_dir = _run_dir("replay")
    toml = write_toml(config, run_dir / "pushrec.toml")
    try:
        replay_from = parse_ts(args.replay_from) if args.replay_from else None
    except ValueError as exc:
        fail(f"--from: {exc}")
    speed = args.speed
    plan = ReplayPlan(
        events=args.events, items=args.items, config=toml, run_dir=run_dir,
        replay_from=replay_from, max_events=args.max_events, speed=speed,
        budget_s=float("inf") if speed or args.as_fast_as_possible else 600.0,
        extra_env=extra_env, as_fast_as_possible=args.as_fast_as_possible,
    )  # fmt: skip
    print(f"pushrec replay: {args.events}, run folder {run_dir}", file=sys.stderr)
    with interrupts_as_keyboard():
        run, results = replay(plan, collect=collect)
    results["title"] = f"pushrec replay: {args.events.name}"
    results["overrides"] = args.overrides
    return _finish(run, results, args.report or run_dir / "report", args.json)


def _compare(paths: list[str]) -> int:
    from worker.replay.report import compare_table

    if len(paths) != 3 or paths[0] != "compare":
        fail("use: pushrec replay compare A.json B.json")
    runs = []
    for name in paths[1:]:
        try:
            runs.append(json.loads(Path(name).read_text()))
        except (OSError, ValueError) as exc:
            fail(f"{name}: {exc}")
    print(compare_table(runs[0], runs[1], paths[1], paths[2]))
    return 0
