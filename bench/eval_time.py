"""Wall time and outcome of `pushrec eval` (tuning included) on shops of the issue's shapes.

    PYTHONPATH=. python bench/eval_time.py [--shops grocery,long_tail,online_retail]
                                           [--json bench/out/eval_time.json]

For each shop: generate it (`bench/shops.py`; Online Retail: the full file or the
shipped sample, converted), run `pushrec eval --items --json` in a fresh process, and record the
wall time, tuning and evaluation seconds, the served recall@10 and the best baseline's.
Prints a table and writes JSON; no assertion on time anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from retail import retail_csvs
from shops import SHAPES, generate, write


def _csvs(shop: str, work: Path) -> tuple[Path, Path]:
    """(events, items) CSVs of `shop`."""
    if shop == "online_retail":
        events, items, source = retail_csvs(work / "or")
        print(f"online_retail: {source}", flush=True)
        return events, items
    rows, item_rows = generate(SHAPES[shop], seed=0)
    write(work / shop, rows, item_rows)
    return work / shop / "events.csv.gz", work / shop / "items.csv"


def run(shop: str, work: Path) -> dict[str, Any]:
    events, items = _csvs(shop, work)
    out = work / f"{shop}.json"
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "eval",
            "--events",
            str(events),
            "--items",
            str(items),
            "--json",
            str(out),
        ],
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    wall = time.perf_counter() - started
    result = json.loads(out.read_text())
    served = result["metrics"]["served_blend"]["recall@10"]
    best_name = result["best_baseline"]
    best = result["metrics"][best_name]["recall@10"]
    return {
        "wall_s": wall,
        "tune_s": result["tune_seconds"],
        "counts": result["counts"],
        "served_recall@10": served,
        "best_baseline": best_name,
        "best_baseline_recall@10": best,
        "ratio": served / best if best else None,
        "params": result["params"],
        "category_popular_recall@10": result["metrics"]
        .get("category_popular", {})
        .get("recall@10"),
        "tuning_seconds": result["tuning"].get("seconds"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shops", default="grocery,long_tail,online_retail")
    parser.add_argument("--json", type=Path, default=Path("bench/out/eval_time.json"))
    args = parser.parse_args()
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "shops": {},
    }
    with tempfile.TemporaryDirectory(prefix="pushrec-evaltime-") as tmp:
        for shop in args.shops.split(","):
            res = run(shop, Path(tmp))
            results["shops"][shop] = res
            print(f"{shop}: {json.dumps({k: v for k, v in res.items() if k != 'params'})}")
    print(f"\n{'shop':16s}{'wall s':>8s}{'tune s':>8s}{'served':>8s}{'best':>8s}  ratio")
    for shop, r in results["shops"].items():
        print(
            f"{shop:16s}{r['wall_s']:8.0f}{r['tune_s']:8.0f}{r['served_recall@10']:8.4f}"
            f"{r['best_baseline_recall@10']:8.4f}  {r['ratio']:.3f} ({r['best_baseline']})"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
