"""Synthetic shops of the shapes `pushrec eval` must handle, written as canonical CSVs.

Real logs of those shapes are not redistributable here, so the eval-time benchmark
(`bench/eval_time.py`) generates logs with the same size and the same kind of structure:

- `grocery`: 30k shoppers x 24k items x 800k purchase lines over a year; each shopper
  rebuys a personal set of staples on most trips (heavy repeat buying) and adds items of
  a few favourite aisles and the shop's best sellers, so popularity is a strong signal.
- `long_tail`: 2.5k shoppers x 60k items x 1.5M events (mostly views, some carts and
  purchases) over six months, browsing sessions within one of a few favourite categories
  of a catalogue with a long tail.

Usage: python bench/shops.py grocery OUT_DIR [--seed 0] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import csv
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

_DAY = 86_400.0
_T0 = 1_700_000_000.0


@dataclass(frozen=True)
class Shape:
    shoppers: int
    items: int
    events: int
    days: float
    categories: int
    tastes: int  # favourite categories per shopper
    staples: int  # items a shopper rebuys (0: none)
    basket: int  # events per trip / session
    views: float  # share of view events
    carts: float  # share of add_to_cart events (the rest are purchases)


SHAPES = {
    "grocery": Shape(30_000, 24_000, 800_000, 365.0, 300, 3, 12, 8, 0.0, 0.0),
    "long_tail": Shape(2_500, 60_000, 1_500_000, 182.0, 1_000, 4, 0, 12, 0.8, 0.1),
}


def _zipf_weights(n: int, a: float, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    w = 1.0 / np.arange(1, n + 1) ** a
    rng.shuffle(w)
    return w / w.sum()


def generate(shape: Shape, seed: int = 0) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """(events, items) rows of the canonical CSVs."""
    rng = np.random.default_rng(seed)
    pop = _zipf_weights(shape.items, 1.0, rng)
    category = rng.integers(0, shape.categories, size=shape.items)
    members = [np.flatnonzero(category == c) for c in range(shape.categories)]
    # cumulative weights: one draw is a binary search, not an O(n) rng.choice(p=...)
    member_cdf = [np.cumsum(pop[m]) / pop[m].sum() for m in members]
    pop_cdf = np.cumsum(pop)

    def draw_in(c: int) -> int:
        cdf = member_cdf[c]
        return int(members[c][min(int(np.searchsorted(cdf, rng.random())), cdf.size - 1)])

    trips = max(1, shape.events // (shape.shoppers * shape.basket))
    events: list[tuple[str, ...]] = []
    n = 0
    # shoppers differ in activity (a few buy a lot), as in real logs
    activity = rng.lognormal(0.0, 0.8, size=shape.shoppers)
    activity = activity / activity.mean() * trips
    for u in range(shape.shoppers):
        tastes = rng.choice(shape.categories, size=shape.tastes, replace=False)
        staples = (
            np.array([draw_in(int(c)) for c in tastes for _ in range(4) if members[c].size])[
                : shape.staples
            ]
            if shape.staples
            else np.empty(0, np.int64)
        )
        start = rng.uniform(0, shape.days * 0.8)
        n_trips = max(1, int(rng.poisson(activity[u])))
        times = np.sort(rng.uniform(start, shape.days, size=n_trips))
        for t in times.tolist():
            size = max(1, int(rng.poisson(shape.basket)))
            draw = rng.random(size)
            picks: list[int] = []
            for d in draw.tolist():
                if staples.size and d < 0.55:
                    picks.append(int(staples[rng.integers(staples.size)]))
                elif d < 0.85:
                    c = int(tastes[rng.integers(tastes.size)])
                    if members[c].size:
                        picks.append(draw_in(c))
                else:
                    picks.append(min(int(np.searchsorted(pop_cdf, rng.random())), shape.items - 1))
            for k, item in enumerate(picks):
                r = rng.random()
                kind = (
                    "view"
                    if r < shape.views
                    else "add_to_cart"
                    if r < shape.views + shape.carts
                    else "purchase"
                )
                n += 1
                ts = _T0 + (t + k * 60.0 / _DAY) * _DAY
                events.append((f"e{n}", f"u{u}", f"i{item}", kind, f"{ts:.0f}", "1", ""))
    items = [
        (f"i{i}", f"Item {i}", f"c{category[i]}", "", "", "", "", "") for i in range(shape.items)
    ]
    return events, items


def write(out_dir: Path, events: list[tuple[str, ...]], items: list[tuple[str, ...]]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with gzip.open(out_dir / "events.csv.gz", "wt", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["event_id", "user_id", "item_id", "type", "ts", "quantity", "price"])
        w.writerows(events)
    with open(out_dir / "items.csv", "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["item_id", "title", "category", "brand", "price", "stock", "url", "image"])
        w.writerows(items)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply shoppers and events")
    args = ap.parse_args(argv)
    s = SHAPES[args.shape]
    shape = Shape(
        **{
            **s.__dict__,
            "shoppers": max(1, int(s.shoppers * args.scale)),
            "events": max(1, int(s.events * args.scale)),
        }
    )
    events, items = generate(shape, args.seed)
    write(args.out_dir, events, items)
    print(f"{args.shape}: {len(events)} events, {len(items)} items -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
