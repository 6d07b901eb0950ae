"""The Online Retail sample shipped inside the package: a few thousand shoppers over a few
months of the UCI Online Retail log (Chen, Sain & Guo, 2012; CC BY 4.0), converted to the
canonical CSVs, gzipped, in `indexing/data/online_retail_sample/`.

`build_sample(raw, out_dir)` makes it from the full raw file, reproducibly (a seeded choice
of shoppers, rows in file order): `pushrec data sample` runs it. `sample_files()` names the
shipped files; tests, benches and `pushrec demo` read them when the full file is absent.

Files: `events.csv.gz` and `items.csv.gz` (canonical, as `convert_online_retail` writes
them), `shoppers.csv.gz` (`user_id,country`: the customer's most frequent country in the
raw file, which the demo turns into a time zone), `README.md` (origin, licence, counts).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from indexing.events import open_text
from indexing.online_retail import convert_online_retail

__all__ = ["SAMPLE_DIR", "SampleFiles", "SampleSpec", "build_sample", "sample_files"]

SAMPLE_DIR = Path(__file__).resolve().parent / "data" / "online_retail_sample"
ATTRIBUTION = (
    "UCI Online Retail data set (Chen, D., Sain, S.L., Guo, K., 2012, doi:10.1057/dbm.2012.17), "
    "UCI Machine Learning Repository, CC BY 4.0; sample converted by pushrec"
)


@dataclass(frozen=True)
class SampleSpec:
    """Which part of the raw file the sample keeps: `shoppers` customers drawn with
    `seed` among those with a purchase in [start, end) (ISO dates, UTC)."""

    shoppers: int = 3000
    start: str = "2010-12-01"
    end: str = "2011-05-01"
    seed: int = 17


@dataclass(frozen=True)
class SampleFiles:
    events: Path
    items: Path
    shoppers: Path
    readme: Path


def sample_files(folder: Path = SAMPLE_DIR) -> SampleFiles:
    """The sample's files in `folder` (default: the shipped copy); raises
    `FileNotFoundError` naming the first one missing."""
    files = SampleFiles(
        events=folder / "events.csv.gz",
        items=folder / "items.csv.gz",
        shoppers=folder / "shoppers.csv.gz",
        readme=folder / "README.md",
    )
    for path in (files.events, files.items, files.shoppers):
        if not path.is_file():
            raise FileNotFoundError(f"sample file missing: {path}")
    return files


def _countries(raw: Path) -> dict[str, str]:
    """CustomerID (as the converter writes it) -> most frequent Country."""
    seen: dict[str, Counter[str]] = defaultdict(Counter)
    with open_text(raw) as fh:
        for row in csv.DictReader(fh):
            customer = row["CustomerID"].strip().removesuffix(".0")
            if customer:
                seen[customer][row["Country"].strip()] += 1
    return {c: counts.most_common(1)[0][0] for c, counts in seen.items()}


def _write_gz(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """A gzipped CSV whose bytes depend only on its rows (no name or time in the header)."""
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz,
        io.TextIOWrapper(gz, encoding="utf-8", newline="") as fh,
    ):
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def build_sample(raw: Path, out_dir: Path, spec: SampleSpec = SampleSpec()) -> dict[str, object]:
    """Write the sample's files into `out_dir` from the raw `online_retail.csv.gz` (or its
    folder); returns the counts written into its README. Raises `InputError` as
    `convert_online_retail` does."""
    if raw.is_dir():
        raw = raw / "online_retail.csv.gz"
    out_dir.mkdir(parents=True, exist_ok=True)
    start, end = spec.start + "T00:00:00", spec.end + "T00:00:00"
    with tempfile.TemporaryDirectory(prefix="pushrec-sample-") as tmp:
        convert_online_retail(raw, Path(tmp))
        with open(Path(tmp) / "events.csv", encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            ts_col, user_col, item_col = (header.index(n) for n in ("ts", "user_id", "item_id"))
            window = [row for row in reader if start <= row[ts_col] < end]
        with open(Path(tmp) / "items.csv", encoding="utf-8", newline="") as fh:
            item_reader = csv.reader(fh)
            item_header = next(item_reader)
            items = {row[0]: row for row in item_reader}
    customers = sorted({row[user_col] for row in window})
    chosen = set(random.Random(spec.seed).sample(customers, min(spec.shoppers, len(customers))))
    events = [row for row in window if row[user_col] in chosen]
    kept_items = sorted({row[item_col] for row in events})
    countries = _countries(raw)
    _write_gz(out_dir / "events.csv.gz", header, events)
    _write_gz(out_dir / "items.csv.gz", item_header, [items[i] for i in kept_items])
    _write_gz(
        out_dir / "shoppers.csv.gz",
        ["user_id", "country"],
        [[c, countries.get(c, "")] for c in sorted(chosen)],
    )
    counts: dict[str, object] = {
        "shoppers": len(chosen),
        "events": len(events),
        "items": len(kept_items),
        "first_event": events[0][ts_col] if events else None,
        "last_event": events[-1][ts_col] if events else None,
        "spec": {"shoppers": spec.shoppers, "start": spec.start, "end": spec.end,
                 "seed": spec.seed},
    }  # fmt: skip
    (out_dir / "README.md").write_text(_readme(counts))
    return counts


def _readme(counts: dict[str, object]) -> str:
    return f"""# Online Retail sample (shipped with pushrec)

A sample of the **UCI Online Retail** data set: the transactions of a UK online gift-ware
retailer, December 2010 to December 2011.

- Source: UCI Machine Learning Repository, "Online Retail" (id 352), donated by Dr Daqing
  Chen. Cite: Chen, D., Sain, S.L., Guo, K. (2012), *Data mining for the online retail
  industry: A case study of RFM model-based customer segmentation using data mining*,
  Journal of Database Marketing and Customer Strategy Management 19(3):197-208,
  doi:10.1057/dbm.2012.17.
- Licence: **Creative Commons Attribution 4.0 International (CC BY 4.0)**,
  https://creativecommons.org/licenses/by/4.0/. This sample is a modified extract:
  lines converted to pushrec's canonical events (see `indexing/online_retail.py` for what is
  dropped and why), restricted to a seeded random choice of customers and a date window.

Made by `pushrec data sample online_retail.csv.gz DIR` (`indexing/sample.py`), reproducible
from the full file with the spec below. Files: `events.csv.gz` and `items.csv.gz` (canonical
CSVs, `docs/indexing.md`), `shoppers.csv.gz` (`user_id,country`).

```json
{json.dumps(counts, indent=2)}
```
"""
