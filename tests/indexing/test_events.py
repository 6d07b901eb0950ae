from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexing import EmptyDataError, InputError, parse_ts, read_events, read_events_csv
from tests.indexing.conftest import write_csv


def _row(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "event_id": "e1",
        "user_id": "u1",
        "item_id": "i1",
        "type": "view",
        "ts": "1700000000",
        "quantity": "",
        "price": "",
    }
    base.update(kw)
    return base


def test_parse_ts_accepts_epoch_and_iso_forms() -> None:
    assert parse_ts(1700000000) == 1700000000.0
    assert parse_ts("1700000000.5") == 1700000000.5
    assert parse_ts("2023-11-14T22:13:20Z") == 1700000000.0
    assert parse_ts("2023-11-14T22:13:20+00:00") == 1700000000.0
    assert parse_ts("2023-11-14T22:13:20") == 1700000000.0  # naive is UTC
    for bad in ("yesterday", "nan", float("inf"), None, True):
        with pytest.raises(ValueError):
            parse_ts(bad)


def test_stream_mappings_are_parsed_and_duplicates_kept_once() -> None:
    rows = [
        _row(event_id="a", ts=1700000000.0),
        _row(event_id=b"b", user_id=b"u2", item_id=b"i2", type=b"purchase", ts=b"1700000100"),
        _row(event_id="a", ts=1700000500.0),  # duplicate event id: first wins
    ]
    log, report = read_events(iter(rows))
    assert len(log) == 2
    assert report.duplicates == 1 and report.accepted == 2 and report.rows == 3
    assert log.user_ids == ("u1", "u2") and log.item_ids == ("i1", "i2")
    assert log.ts.tolist() == [1700000000.0, 1700000100.0]
    assert log.type_mask("purchase").tolist() == [False, True]


def test_bad_rows_are_counted_by_reason_and_kept_for_inspection(tmp_path: Path) -> None:
    rows = [
        _row(event_id="ok"),
        _row(event_id=""),
        _row(event_id="2", user_id=""),
        _row(event_id="3", type="like"),
        _row(event_id="4", ts="not a time"),
        _row(event_id="5", quantity="lots"),
        _row(event_id="6", type="search", item_id=""),
    ]
    path = write_csv(tmp_path / "ev.csv", [{k: str(v) for k, v in r.items()} for r in rows])
    log, report = read_events_csv(path)
    assert len(log) == 1
    assert dict(report.rejected) == {
        "missing_event_id": 1,
        "missing_user_id": 1,
        "unknown_type": 1,
        "bad_ts": 1,
        "bad_quantity": 1,
        "no_item": 1,
    }
    assert report.rows == report.accepted + report.duplicates + report.rejected_total
    out = tmp_path / "rejected.csv"
    report.write_rejected(out)
    lines = out.read_text().splitlines()
    assert lines[0].startswith("line,reason,event_id")
    assert len(lines) == 7 and lines[4].startswith("5,bad_ts,4,")


def test_until_keeps_only_earlier_events() -> None:
    rows = [_row(event_id=str(i), ts=1700000000 + i) for i in range(5)]
    log, report = read_events(rows, until=1700000003)
    assert len(log) == 3 and report.rejected["after_until"] == 2


def test_no_usable_event_raises_empty_data() -> None:
    with pytest.raises(EmptyDataError):
        read_events([_row(type="bogus")])


def test_csv_without_required_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="header lacks"):
        read_events_csv(path)


def test_gzipped_csv_reads_the_same(tmp_path: Path, planted_csv: Path) -> None:
    import gzip

    gz = tmp_path / "events.csv.gz"
    gz.write_bytes(gzip.compress(planted_csv.read_bytes()))
    a, _ = read_events_csv(planted_csv)
    b, _ = read_events_csv(gz)
    assert np.array_equal(a.ts, b.ts) and a.item_ids == b.item_ids
