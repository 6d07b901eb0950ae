"""The Online Retail adapter: every dropped line is counted by reason and written out."""

from __future__ import annotations

import csv
import gzip
import itertools
from pathlib import Path

from indexing import convert_online_retail, read_events_csv, read_items_csv
from tests.indexing.conftest import real_data_or_skip

HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
LINES = [
    "536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom",
    "536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom",
    "536366,71053,WHITE METAL LANTERN,2,2010-12-01 09:00:00,3.39,13047.0,United Kingdom",
    "C536379,71053,WHITE METAL LANTERN,-1,2010-12-01 09:41:00,3.39,13047.0,United Kingdom",
    "536370,POST,POSTAGE,3,2010-12-01 08:45:00,18.0,12583.0,France",
    "536371,gift_0001_20,VOUCHER,1,2010-12-01 08:45:00,20.0,12583.0,France",
    "536372,22633,HAND WARMER,6,2010-12-01 09:01:00,1.85,,United Kingdom",
    "536373,22634,CHILDS BREAKFAST SET,0,2010-12-01 09:02:00,1.85,17850.0,United Kingdom",
    "536374,22635,FREE GIFT,1,2010-12-01 09:03:00,0.0,17850.0,United Kingdom",
    "536375,22636,BROKEN DATE,1,yesterday,1.0,17850.0,United Kingdom",
]


def test_convert_counts_every_dropped_line(tmp_path: Path) -> None:
    src = tmp_path / "online_retail.csv.gz"
    src.write_bytes(gzip.compress((HEADER + "\n".join(LINES) + "\n").encode()))
    report = convert_online_retail(tmp_path, tmp_path / "out")
    assert report.as_dict() == {
        "rows": 10,
        "events": 3,
        "items": 2,
        "dropped": {
            "cancellation": 1,
            "missing_customer": 1,
            "non_positive_price": 1,
            "non_positive_quantity": 1,
            "non_product_code": 2,
            "unparseable": 1,
        },
    }
    log, events_report = read_events_csv(tmp_path / "out" / "events.csv")
    # the two identical source lines stay two events (distinct line numbers)
    assert len(log) == 3 and events_report.duplicates == 0
    assert log.user_ids == ("17850", "13047")
    assert log.type_mask("purchase").all()
    items, _ = read_items_csv(tmp_path / "out" / "items.csv")
    assert items["85123A"].title == "WHITE HANGING HEART" and items["85123A"].price == 2.55
    with open(tmp_path / "out" / "rejected.csv", encoding="utf-8") as fh:
        rejected = list(csv.DictReader(fh))
    assert len(rejected) == 7 and rejected[0]["reason"] == "cancellation"


def test_convert_a_slice_of_the_real_file(tmp_path: Path) -> None:
    raw = real_data_or_skip()
    with gzip.open(raw, "rt", encoding="utf-8", newline="") as fh:
        head = "".join(itertools.islice(fh, 20_001))
    src = tmp_path / "online_retail.csv.gz"
    src.write_bytes(gzip.compress(head.encode()))
    report = convert_online_retail(src, tmp_path / "out")
    assert report.rows == 20_000
    assert report.events + sum(report.dropped.values()) == report.rows
    assert report.dropped["missing_customer"] > 0 and report.events > 10_000
