"""This checkout against another (`--base`), by `bench/hot_path.py` run in pairs a few
seconds apart: CPU per event of each side, and how the pairs compare.

On a shared 2-core VM the same code measured 2.2 to 3.6 ms a batched event in runs a
minute apart (2026-12-04), more than most changes are worth; separate runs of each
checkout cannot tell a 10 % change. Here both checkouts start `hot_path.py --serve` once
(shop, Redis, gateway, a warm runtime each) and take turns, ABBA (base, this; this, base;
…), so each pair shares the machine's mood of those seconds. Reported per mode: each
side's median, the median of the per-pair ratios (this / base) and in how many pairs this
checkout was cheaper.

    PYTHONPATH=. python bench/ab.py --base /work/wt-base [--modes single,batched]
        [--pairs 8] [--events 300] [--deliver-inline] [--json OUT]

The base must be a checkout that has `--serve` (this file's commit or later) and, like this
one, sit beside `shared/` so that both read the whole Online Retail file
(`bench/retail.py` falls back to the shipped sample elsewhere: two different shops).

What it can resolve: this checkout against itself (`--base` the same folder, 6 pairs of
200 events, `--deliver-inline`, 2026-12-04) read 1.06 single and 0.93 batched, per-pair
ratios from 0.86 to 1.15. A change needs more pairs and events than that to show below
about 7 %; the ratio's spread over the pairs is in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent


class Side:
    """One checkout's `hot_path.py --serve`, kept running."""

    def __init__(self, name: str, checkout: Path, args: argparse.Namespace) -> None:
        self.name = name
        argv = [sys.executable, str(checkout / "bench" / "hot_path.py"), "--serve",
                f"--events={args.events}", f"--batch={args.batch}",
                *(["--deliver-inline"] if args.deliver_inline else [])]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": f"{checkout}:{checkout / 'bench'}"}
        self.process = subprocess.Popen(
            argv, cwd=checkout, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def wait_ready(self) -> None:
        """Until its shop is built and its runtime warm (both sides set up at once)."""
        self._expect("ready")

    def _line(self) -> str:
        out: IO[str] | None = self.process.stdout
        assert out is not None
        line = out.readline()
        if not line:
            raise RuntimeError(f"{self.name}: hot_path.py exited ({self.process.wait()})")
        return line.strip()

    def _expect(self, word: str) -> None:
        while (line := self._line()) != word:
            print(f"[{self.name}] {line}", file=sys.stderr)

    def measure(self, mode: str, tag: str) -> dict[str, Any]:
        """`run_once`'s figures for one run of `mode`."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"{mode} {tag}\n")
        self.process.stdin.flush()
        while not (line := self._line()).startswith("{"):
            print(f"[{self.name}] {line}", file=sys.stderr)
        row: dict[str, Any] = json.loads(line)
        return row

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=120)


def compare(base: list[float], head: list[float]) -> dict[str, Any]:
    """Each side's median, the median per-pair ratio head / base, pairs head was lower."""
    ratios = [h / b for b, h in zip(base, head, strict=True)]
    return {
        "base_ms": statistics.median(base),
        "head_ms": statistics.median(head),
        "ratio": statistics.median(ratios),
        "head_lower": sum(h < b for b, h in zip(base, head, strict=True)),
        "pairs": len(ratios),
        "base_runs": base,
        "head_runs": head,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="the other checkout")
    parser.add_argument("--modes", default="single,batched")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--events", type=int, default=300, help="events per run")
    parser.add_argument("--batch", type=int, default=100, help="events per track_batch call")
    parser.add_argument("--deliver-inline", action="store_true")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "ab.json")
    args = parser.parse_args()
    sides = {"base": Side("base", args.base.resolve(), args), "head": Side("head", ROOT, args)}
    modes = args.modes.split(",")
    cpu: dict[str, dict[str, list[float]]] = {m: {"base": [], "head": []} for m in modes}
    try:
        for side in sides.values():
            side.wait_ready()
        for n in range(args.pairs):
            order = ("base", "head") if n % 2 == 0 else ("head", "base")
            for mode, runs in cpu.items():
                for name in order:
                    row = sides[name].measure(mode, f"{mode}{n}{name}")
                    runs[name].append(row["total"]["cpu_ms"])
    finally:
        for side in sides.values():
            side.close()
    report = {mode: compare(runs["base"], runs["head"]) for mode, runs in cpu.items()}
    print(f"{'mode':8s} {'base ms':>8s} {'head ms':>8s} {'head/base':>9s}  head lower")
    for mode, r in report.items():
        print(f"{mode:8s} {r['base_ms']:8.3f} {r['head_ms']:8.3f} {r['ratio']:9.3f}  "
              f"{r['head_lower']} of {r['pairs']}")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"bench": "ab", "base": str(args.base), **vars_of(args),
                                     "results": report}, indent=2))  # fmt: skip
    print(f"wrote {args.json}")


def vars_of(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in ("base", "json")}


if __name__ == "__main__":
    main()
