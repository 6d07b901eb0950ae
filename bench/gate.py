"""The quality gate on real rebuilds: prints a table, writes JSON (no assertions).

    PYTHONPATH=. python bench/gate.py [--every-days 7] [--json bench/out/gate.json]

Replays a scheduled rebuild over the Online Retail log: from the middle of the log on,
every `--every-days`, evaluate the shipped parameters on the events before that day (what
`pushrec index build` records in the manifest). Each build's test period is later than
the one before, so its recall@10 moves by chance. Then, as the scheduler would, the
current version stays until a build passes, and the table counts the builds each gate
rule refuses. Last, builds that are really worse (2 ALS factors; half the item ids
scrambled, as a broken export would) are evaluated on the latest split: a gate must
still refuse them.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from retail import retail_csvs  # noqa: E402

import indexing  # noqa: E402
from indexing.experiment import SERVED, BaselineParams, evaluate_models  # noqa: E402
from indexing.factors import AlsParams  # noqa: E402
from indexing.model import ModelParams  # noqa: E402
from indexing.store import DEFAULT_MAX_DROP, GATE_Z, GateFigure, regression  # noqa: E402

Figure = dict[str, float]
Rule = Callable[[Figure, Figure], bool]  # (current, new) -> refused


def _shipped(old: Figure, new: Figure) -> bool:
    """indexing.store's rule, on these figures."""
    return (
        regression(GateFigure(new["recall"], new["se"]), GateFigure(old["recall"], old["se"]))
        is not None
    )


_DROP = f"{DEFAULT_MAX_DROP:.0%}"
RULES: dict[str, Rule] = {
    f"recall, {_DROP}": lambda old, new: new["recall"] < old["recall"] * (1 - DEFAULT_MAX_DROP),
    f"lift over best baseline, {_DROP}": lambda old, new: (
        new["lift"] < old["lift"] * (1 - DEFAULT_MAX_DROP)
    ),
    f"recall, {_DROP} and {GATE_Z:g} SE (shipped)": _shipped,
}


def figure(log: indexing.EventLog, params: ModelParams) -> Figure:
    result = evaluate_models(log, params, BaselineParams())
    served = result.metrics[SERVED]
    _, best = result.best_baseline()
    return {
        "recall": served["recall@10"],
        "se": served.get("recall@10_se", math.nan),
        "lift": served["recall@10"] / best if best else math.nan,
        "test_users": served["users"],
    }


def refusals(builds: list[Figure], rule: Rule) -> int:
    """Builds refused when the current version stays until one passes."""
    current, refused = builds[0], 0
    for build in builds[1:]:
        if rule(current, build):
            refused += 1
        else:
            current = build
    return refused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--every-days", type=float, default=7.0)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "gate.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        events, _, source = retail_csvs(Path(tmp))
        log, _ = indexing.read_events_csv(events)
    print(f"data: {source}")

    builds: list[dict[str, Any]] = []
    cut, last = float(np.quantile(log.ts, 0.5)), float(log.ts.max()) + 1
    while cut <= last:
        started = time.perf_counter()
        build = {"until": datetime.fromtimestamp(cut, UTC).date().isoformat()}
        build |= figure(log.select(log.ts < cut), ModelParams())
        build["seconds"] = round(time.perf_counter() - started, 1)
        builds.append(build)
        print(json.dumps(build))
        cut += args.every_days * 86_400

    changes = [abs(b["recall"] / a["recall"] - 1) for a, b in itertools.pairwise(builds)]
    routine = {name: refusals(builds, rule) for name, rule in RULES.items()}

    good = builds[-1]
    rng = np.random.default_rng(0)
    items = log.items.copy()
    scrambled = rng.random(items.shape[0]) < 0.5
    items[scrambled] = rng.integers(0, int(items.max()) + 1, int(scrambled.sum()))
    broken = {
        "2 ALS factors": figure(log, ModelParams(als=AlsParams(factors=2))),
        "half the item ids scrambled": figure(dataclasses.replace(log, items=items), ModelParams()),
    }

    print(
        f"\n{len(builds)} builds every {args.every_days:g} days; recall@10 change between "
        f"consecutive builds: median {np.median(changes):.1%}, max {max(changes):.1%}"
    )
    print(f"{'gate rule':40s} {'routine builds refused':>24s}  " + "  ".join(broken))
    for name, rule in RULES.items():
        caught = {b: "refused" if rule(good, bad) else "PUBLISHED" for b, bad in broken.items()}
        cells = "  ".join(f"{verdict:>{len(b)}s}" for b, verdict in caught.items())
        print(f"{name:40s} {routine[name]:>14d} of {len(builds) - 1:<7d}  {cells}")
    report = {
        "bench": "gate",
        "every_days": args.every_days,
        "max_drop": DEFAULT_MAX_DROP,
        "gate_z": GATE_Z,
        "builds": builds,
        "recall_change": {"median": float(np.median(changes)), "max": max(changes)},
        "routine_refused": routine,
        "broken": {
            name: {**bad, "refused": {r: RULES[r](good, bad) for r in RULES}}
            for name, bad in broken.items()
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
