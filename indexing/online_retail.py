"""Adapter: the UCI Online Retail transaction log -> canonical events and items CSVs.

Each raw line is a purchase of `Quantity` units of `StockCode` by `CustomerID` at
`InvoiceDate`. A line becomes one `purchase` event with
``event_id = <InvoiceNo>-<line number in the file>`` (exact duplicate lines exist in the
source and are distinct lines, so they stay distinct events), ``user_id`` = CustomerID
without the ``.0`` float suffix, ``ts`` = InvoiceDate as ISO-8601 (UK local time, written
naive and read as UTC: a constant offset per season does not change the ordering the
evaluation needs).

Dropped — and counted per reason, and written with the reason to ``rejected.csv``:
cancellations (InvoiceNo starting with C), non-product stock codes (anything not five
digits plus optional letters: POST, DOT, M, C2, D, S, B, BANK CHARGES, AMAZONFEE, CRUK,
PADS, gift vouchers, DCGS...), lines without CustomerID, Quantity <= 0, UnitPrice <= 0,
and lines whose numbers or date do not parse.

Items: one row per product code kept, title = most frequent description, price = median
unit price over the kept lines; category and brand are unknown in this data set.
"""

from __future__ import annotations

import csv
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from indexing.errors import InputError
from indexing.events import EVENT_FIELDS, open_text
from indexing.items import ITEM_FIELDS

__all__ = ["ConvertReport", "convert_online_retail"]

_PRODUCT_CODE = re.compile(r"\d{5}[A-Za-z]*")
_RAW_FIELDS = ("InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID")
RAW_FILE = "online_retail.csv.gz"


@dataclass
class ConvertReport:
    """Counts of the conversion: `rows == events + sum(dropped)`."""

    rows: int = 0
    events: int = 0
    items: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "events": self.events,
            "items": self.items,
            "dropped": dict(sorted(self.dropped.items())),
        }


def _reason(row: dict[str, str]) -> str | None:
    if row["InvoiceNo"].startswith("C"):
        return "cancellation"
    if not _PRODUCT_CODE.fullmatch(row["StockCode"]):
        return "non_product_code"
    if not row["CustomerID"].strip():
        return "missing_customer"
    try:
        quantity = float(row["Quantity"])
        price = float(row["UnitPrice"])
        datetime.strptime(row["InvoiceDate"], "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return "unparseable"
    if quantity <= 0:
        return "non_positive_quantity"
    if price <= 0:
        return "non_positive_price"
    return None


def convert_online_retail(src: Path, out_dir: Path) -> ConvertReport:
    """Write `events.csv`, `items.csv` and `rejected.csv` into `out_dir` from `src`.

    src: the raw `online_retail.csv.gz` (or a folder holding it). Raises `InputError` when
    the file is missing or lacks a required column.
    """
    if src.is_dir():
        src = src / RAW_FILE
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ConvertReport()
    titles: dict[str, Counter[str]] = defaultdict(Counter)
    prices: dict[str, list[float]] = defaultdict(list)
    try:
        with (
            open_text(src) as fh,
            open(out_dir / "events.csv", "w", encoding="utf-8", newline="") as ev_fh,
            open(out_dir / "rejected.csv", "w", encoding="utf-8", newline="") as rej_fh,
        ):
            reader = csv.DictReader(fh)
            missing = set(_RAW_FIELDS) - set(reader.fieldnames or ())
            if missing:
                raise InputError(f"{src}: header lacks {sorted(missing)}")
            events = csv.writer(ev_fh)
            events.writerow(EVENT_FIELDS)
            rejected = csv.writer(rej_fh)
            rejected.writerow(["line", "reason", *(reader.fieldnames or ())])
            for line, row in enumerate(reader, start=2):
                report.rows += 1
                reason = _reason(row)
                if reason is not None:
                    report.dropped[reason] += 1
                    rejected.writerow([line, reason, *row.values()])
                    continue
                code = row["StockCode"]
                customer = row["CustomerID"].strip().removesuffix(".0")
                ts = row["InvoiceDate"].replace(" ", "T")
                events.writerow(
                    [
                        f"{row['InvoiceNo']}-{line}",
                        customer,
                        code,
                        "purchase",
                        ts,
                        row["Quantity"],
                        row["UnitPrice"],
                    ]
                )
                report.events += 1
                if row.get("Description", "").strip():
                    titles[code][row["Description"].strip()] += 1
                prices[code].append(float(row["UnitPrice"]))
    except OSError as exc:
        raise InputError(f"cannot convert {src}: {exc}") from exc
    with open(out_dir / "items.csv", "w", encoding="utf-8", newline="") as it_fh:
        writer = csv.writer(it_fh)
        writer.writerow(ITEM_FIELDS)
        for code in sorted(prices):
            title = titles[code].most_common(1)[0][0] if titles[code] else ""
            price = statistics.median(prices[code])
            writer.writerow([code, title, "", "", f"{price:.2f}", "", "", ""])
            report.items += 1
    return report
