"""The Online Retail sample shipped in the package: present, small, consistent, and made
reproducibly from the raw file."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

from indexing import read_events_csv, read_items_csv
from indexing.events import open_text
from indexing.sample import SAMPLE_DIR, SampleSpec, build_sample, sample_files
from tests.indexing.test_online_retail import HEADER, LINES

MAX_BYTES = 5 * 1024 * 1024


def test_shipped_sample_loads_and_stays_small() -> None:
    files = sample_files()
    total = sum(p.stat().st_size for p in SAMPLE_DIR.iterdir())
    assert total < MAX_BYTES
    log, report = read_events_csv(files.events)
    assert report.rejected_total == 0 and report.duplicates == 0
    assert len(set(log.user_ids)) >= 2000 and len(log) >= 50_000
    assert log.type_mask("purchase").all()
    items, _ = read_items_csv(files.items)
    assert set(log.item_ids) <= set(items)
    with open_text(files.shoppers) as fh:
        shoppers = {row["user_id"]: row["country"] for row in csv.DictReader(fh)}
    assert set(log.user_ids) <= set(shoppers)
    assert "CC BY 4.0" in files.readme.read_text()


def _raw(tmp_path: Path) -> Path:
    lines = [*LINES, "536380,22633,HAND WARMER,2,2011-02-01 10:00:00,1.85,12583.0,France"]
    src = tmp_path / "online_retail.csv.gz"
    src.write_bytes(gzip.compress((HEADER + "\n".join(lines) + "\n").encode()))
    return src


def test_sample_is_reproducible_and_keeps_its_window(tmp_path: Path) -> None:
    spec = SampleSpec(shoppers=10, start="2010-12-01", end="2011-01-01", seed=3)
    build_sample(_raw(tmp_path), tmp_path / "a", spec)
    counts = build_sample(_raw(tmp_path), tmp_path / "b", spec)
    for name in ("events.csv.gz", "items.csv.gz", "shoppers.csv.gz", "README.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # the February line of customer 12583 is outside the window; 12583 bought nothing
    # valid in December, so only the two December customers remain
    assert counts["shoppers"] == 2 and counts["events"] == 3
    log, _ = read_events_csv(tmp_path / "a" / "events.csv.gz")
    assert set(log.user_ids) == {"17850", "13047"}
    with open_text(tmp_path / "a" / "shoppers.csv.gz") as fh:
        assert {r["country"] for r in csv.DictReader(fh)} == {"United Kingdom"}
