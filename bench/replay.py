"""Replay throughput: the Online Retail log through `pushrec replay --as-fast-as-possible`
(real worker and scheduler processes, the local gateways, an embedded Redis, the default
rules), timed. The issue's target: the whole file (396k events) in under 15 minutes on
2 cores.

The full log (`../shared/data/online_retail/`, converted as `pushrec data convert
online-retail` does) when present, else the shipped sample (`retail.py`). Events before
`--from` are the past (applied straight to Redis, the index built from them); the rest are
replayed. `--budget-s` caps the feed: a run stopped there reports what it replayed and
the rate it went at. Prints a table; writes JSON. No assertion: figures only.

    python bench/replay.py [--from 2011-01-01] [--budget-s 1800] [--json bench/out/replay.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from retail import retail_csvs  # noqa: E402

from indexing import parse_ts  # noqa: E402
from worker.replay.config import load_config, write_config  # noqa: E402
from worker.replay.engine import ReplayPlan, ReplayRun, replay  # noqa: E402
from worker.replay.results import collect  # noqa: E402
from worker.replay.stack import interrupts_as_keyboard  # noqa: E402
from worker.service.runtime import Runtime  # noqa: E402


def measure(events: Path, items: Path, work: Path, replay_from: float, budget_s: float) -> Any:
    config = write_config(load_config(None), work / "pushrec.toml")
    plan = ReplayPlan(
        events=events, items=items, config=config, run_dir=work / "run",
        replay_from=replay_from, budget_s=budget_s, as_fast_as_possible=True,
    )  # fmt: skip
    timed: dict[str, float] = {}

    def collect_timed(run: ReplayRun, rt: Runtime) -> dict[str, Any]:
        timed["fed"] = time.time()
        return collect(run, rt)

    started = time.time()
    with interrupts_as_keyboard():  # a SIGTERM stops the run as Ctrl-C does: no stray process
        run, results = replay(plan, collect=collect_timed)
    timed["total"] = time.time() - started
    return run, results, timed, started


def figures(
    run: ReplayRun, results: dict[str, Any], timed: dict[str, float], started: float
) -> dict[str, Any]:
    """What the run took and did: phase wall times, the feed's rate, the outcome."""
    sent = sorted(run.sent_at.values())
    feed_s = (sent[-1] - sent[0]) if len(sent) > 1 else 0.0
    rules = results["rules"].values()
    account = results["input"]
    rate = len(sent) / feed_s if feed_s else None
    return {
        "rows": account["rows"],
        "past": account["past"],
        "replayed": account["replayed"],
        "sent": len(sent),
        "applied": account["applied"],
        "duplicates": account["duplicates"],
        "rejected": {**account["rejected_before_sending"], **account["rejected_by_workers"]},
        "interrupted": run.interrupted,
        "stopped_by_budget": len(sent) < account["replayed"] and not run.interrupted,
        "clock_steps": len(run.steps),
        "events_per_step": round(len(sent) / len(run.steps), 1) if run.steps else None,
        "wall_s": {
            "total": round(timed["total"], 1),
            "set_up": round(sent[0] - started, 1) if sent else None,
            "feed": round(feed_s, 1),
            "tail_and_drain": round(timed["fed"] - sent[-1], 1) if sent else None,
            "collect_and_stop": round(started + timed["total"] - timed["fed"], 1),
        },
        "events_per_s_fed": round(rate, 1) if rate else None,
        "minutes_for_all_rows_at_that_rate": round(account["rows"] / rate / 60, 1)
        if rate
        else None,
        "decided": sum(r["decided"] for r in rules),
        "delivered": sum(r["delivered"] for r in rules),
        "held_out": sum(r["held_out"] for r in rules),
        "simulated_days": round((results["replayed"]["to"] - results["replayed"]["from"]) / 86_400),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--from",
        dest="replay_from",
        default="2011-01-01",
        help="replay events from this date on (the rest is the past)",
    )
    parser.add_argument(
        "--budget-s", type=float, default=1800.0, help="wall-clock cap on the feed and tail"
    )
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "replay.json")
    args = parser.parse_args()
    os.environ.setdefault("XDG_STATE_HOME", tempfile.mkdtemp(prefix="pushrec-bench-state-"))
    with tempfile.TemporaryDirectory(prefix="pushrec-bench-replay-") as tmp:
        work = Path(tmp)
        events, items, source = retail_csvs(work)
        run, results, timed, started = measure(
            events, items, work, parse_ts(args.replay_from), args.budget_s
        )
    report = {"source": source, **figures(run, results, timed, started)}
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {json.dumps(value)}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
