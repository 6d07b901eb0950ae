"""Synthetic data with known answers for the indexing tests."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "online_retail"
BLOCKS = 4
ITEMS_PER_BLOCK = 12
USERS_PER_BLOCK = 40
DAY = 86_400.0
T0 = 1_700_000_000.0


def block_of(item_id: str) -> int:
    return int(item_id.split("-")[0][1:])


def planted_rows(seed: int = 0, per_user: int = 6) -> list[dict[str, str]]:
    """Users of block b touch only items of block b: item ids `b<b>-<j>`, users `u<b>-<i>`.

    Events are spread over 100 days; every user has `per_user` distinct items.
    """
    rng = np.random.default_rng(seed)
    rows: list[dict[str, str]] = []
    n = 0
    for b in range(BLOCKS):
        for u in range(USERS_PER_BLOCK):
            items = rng.choice(ITEMS_PER_BLOCK, size=per_user, replace=False)
            for j in items.tolist():
                n += 1
                rows.append(
                    {
                        "event_id": f"e{n}",
                        "user_id": f"u{b}-{u}",
                        "item_id": f"b{b}-{j}",
                        "type": "purchase" if rng.random() < 0.5 else "view",
                        "ts": str(T0 + float(rng.uniform(0, 100)) * DAY),
                        "quantity": "1",
                        "price": "",
                    }
                )
    return rows


def write_csv(path: Path, rows: list[dict[str, str]], fields: list[str] | None = None) -> Path:
    fields = fields or list(rows[0])
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def planted_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "events.csv", planted_rows())


@pytest.fixture
def clustered() -> Iterator[np.ndarray]:
    """Float32 (4000, 32) unit vectors around 40 cluster centres (MF-like)."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(40, 32))
    x = centres[rng.integers(0, 40, size=4000)] + 0.35 * rng.normal(size=(4000, 32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    yield x.astype(np.float32)


def real_data_or_skip() -> Path:
    raw = DATA_DIR / "online_retail.csv.gz"
    if not raw.exists():
        pytest.skip(f"real data absent: {raw} (tests that need it are skipped)")
    return raw
