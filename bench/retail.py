"""The real data the benches run on: the full UCI Online Retail log converted, when
`../shared/data/online_retail/` is there, else the sample shipped in the package
(`indexing/sample.py`), so every bench runs on a fresh clone."""

from __future__ import annotations

from pathlib import Path

import indexing
from indexing.sample import sample_files

ROOT = Path(__file__).resolve().parent.parent
RETAIL = ROOT.parent / "shared" / "data" / "online_retail" / "online_retail.csv.gz"


def retail_csvs(work: Path) -> tuple[Path, Path, str]:
    """(events CSV, items CSV, source name: `online_retail` or `sample`); converts the
    full file into `work` when it is present."""
    if RETAIL.exists():
        indexing.convert_online_retail(RETAIL, work)
        return work / "events.csv", work / "items.csv", "online_retail"
    files = sample_files()
    return files.events, files.items, "sample"
