"""Interaction events in: the canonical CSV and the worker's log stream, parsed into an
`EventLog` (struct of arrays) with a `ReadReport` that counts every row not kept.

Canonical interactions CSV (header required, extra columns ignored)::

    event_id,user_id,item_id,type,ts,quantity,price

`type` is one of `EVENT_TYPES`; `ts` is epoch seconds (float) or ISO-8601 (a naive time is
taken as UTC); ids are strings; `quantity` and `price` may be empty. The same fields, as
mappings, come from the worker's interaction-log stream: `read_events` takes any iterable of
mappings, so this module stays Redis-free. Duplicated `event_id`s are kept once (the first).
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from indexing.errors import EmptyDataError, InputError

__all__ = [
    "EVENT_FIELDS",
    "EVENT_TYPES",
    "EventLog",
    "ReadReport",
    "RejectedRow",
    "open_text",
    "parse_ts",
    "read_events",
    "read_events_csv",
]

EVENT_TYPES: tuple[str, ...] = (
    "view",
    "search",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
    "push_open",
    "push_click",
)
EVENT_FIELDS: tuple[str, ...] = (
    "event_id",
    "user_id",
    "item_id",
    "type",
    "ts",
    "quantity",
    "price",
)
_TYPE_CODE = {name: code for code, name in enumerate(EVENT_TYPES)}
_MAX_KEPT_REJECTS = 1000


def open_text(path: Path) -> io.TextIOBase:
    """Open a text file for reading, gunzipping when the name ends in `.gz`."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def parse_ts(value: object) -> float:
    """Epoch seconds (UTC) from a float, an int, a numeric string or an ISO-8601 string.

    Raises `ValueError` for anything else (never another error: an integer too large for
    a float, a date out of range), NaN or infinity. A naive ISO time is UTC.
    """
    if isinstance(value, bool):
        raise ValueError("boolean timestamp")
    try:
        ts = _seconds(value)
    except (OverflowError, OSError) as exc:
        raise ValueError(f"timestamp out of range ({exc})") from None
    if not math.isfinite(ts):
        raise ValueError("timestamp is not finite")
    return ts


def _seconds(value: object) -> float:
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"timestamp of type {type(value).__name__}")
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()


@dataclass(frozen=True)
class RejectedRow:
    """One input row not kept: its 1-based position in the input, the reason, the row."""

    line: int
    reason: str
    row: dict[str, str]


@dataclass
class ReadReport:
    """What happened to every input row: `rows == accepted + duplicates + sum(rejected)`.

    `kept` holds the first `_MAX_KEPT_REJECTS` rejected rows for inspection.
    """

    rows: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    kept: list[RejectedRow] = field(default_factory=list)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def reject(self, line: int, reason: str, row: Mapping[str, object]) -> None:
        self.rejected[reason] += 1
        if len(self.kept) < _MAX_KEPT_REJECTS:
            self.kept.append(RejectedRow(line, reason, {k: str(v) for k, v in row.items()}))

    def as_dict(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": dict(sorted(self.rejected.items())),
        }

    def write_rejected(self, path: Path) -> None:
        """Write the kept rejected rows as CSV `line,reason,<original fields...>`."""
        with open(path, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["line", "reason", *EVENT_FIELDS])
            for rej in self.kept:
                writer.writerow([rej.line, rej.reason, *(rej.row.get(f, "") for f in EVENT_FIELDS)])


@dataclass(frozen=True)
class EventLog:
    """Accepted events as parallel arrays, in input order.

    users, items: int32 (n,) codes into `user_ids` / `item_ids`; types: int8 (n,) codes into
    `EVENT_TYPES`; ts: float64 (n,) epoch seconds; quantity: float32 (n,), 1.0 when absent.
    """

    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    users: npt.NDArray[np.int32]
    items: npt.NDArray[np.int32]
    types: npt.NDArray[np.int8]
    ts: npt.NDArray[np.float64]
    quantity: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def select(self, mask: npt.NDArray[np.bool_]) -> EventLog:
        """The events where `mask` (bool (n,)) is true; id tables are kept as they are."""
        return EventLog(
            self.user_ids,
            self.item_ids,
            self.users[mask],
            self.items[mask],
            self.types[mask],
            self.ts[mask],
            self.quantity[mask],
        )

    def type_mask(self, name: str) -> npt.NDArray[np.bool_]:
        """Bool (n,): events of type `name`."""
        mask: npt.NDArray[np.bool_] = self.types == _TYPE_CODE[name]
        return mask


class _Interner:
    def __init__(self) -> None:
        self.codes: dict[str, int] = {}

    def __call__(self, key: str) -> int:
        code = self.codes.get(key)
        if code is None:
            code = self.codes[key] = len(self.codes)
        return code

    def table(self) -> tuple[str, ...]:
        return tuple(self.codes)


def _text(row: Mapping[str, object], name: str) -> str:
    value = row.get(name)
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8").strip()
    return str(value).strip()


def read_events(
    rows: Iterable[Mapping[str, object]],
    *,
    until: float | None = None,
    min_ts: float | None = None,
    report: ReadReport | None = None,
) -> tuple[EventLog, ReadReport]:
    """Parse, validate and dedupe interaction rows.

    rows: mappings with the `EVENT_FIELDS` keys (str or bytes values, or numbers for ts /
    quantity / price), e.g. `csv.DictReader` rows or entries of the worker's Redis stream.
    until: keep only events with ts < until (others are counted as `after_until`);
    min_ts: likewise drop events with ts < min_ts (`before_min_ts`), e.g. a training window.
    report: an existing report to add to (reading several sources into one account).
    Rows with a missing id, an unknown type, a bad ts or quantity are rejected with a reason;
    an event without an item (a search) is counted as `no_item`. Raises `EmptyDataError` when
    no event is accepted.
    """
    report = report if report is not None else ReadReport()
    users, items = _Interner(), _Interner()
    seen: set[str] = set()
    u_codes: list[int] = []
    i_codes: list[int] = []
    t_codes: list[int] = []
    stamps: list[float] = []
    qty: list[float] = []
    ts_cache: dict[str, float] = {}
    for line, row in enumerate(rows, start=1):
        report.rows += 1
        event_id = _text(row, "event_id")
        user_id = _text(row, "user_id")
        item_id = _text(row, "item_id")
        type_name = _text(row, "type")
        if not event_id:
            report.reject(line, "missing_event_id", row)
            continue
        if not user_id:
            report.reject(line, "missing_user_id", row)
            continue
        if type_name not in _TYPE_CODE:
            report.reject(line, "unknown_type", row)
            continue
        raw_ts = row.get("ts")
        if isinstance(raw_ts, bytes):
            raw_ts = raw_ts.decode("utf-8", "replace")
        try:
            if isinstance(raw_ts, str):
                ts = ts_cache.get(raw_ts)
                if ts is None:
                    ts = ts_cache[raw_ts] = parse_ts(raw_ts)
            else:
                ts = parse_ts(raw_ts)
        except (ValueError, TypeError, OverflowError):
            report.reject(line, "bad_ts", row)
            continue
        raw_q = _text(row, "quantity")
        try:
            quantity = float(raw_q) if raw_q else 1.0
        except ValueError:
            report.reject(line, "bad_quantity", row)
            continue
        if not math.isfinite(quantity):
            report.reject(line, "bad_quantity", row)
            continue
        if not item_id:
            report.reject(line, "no_item", row)
            continue
        if until is not None and ts >= until:
            report.reject(line, "after_until", row)
            continue
        if min_ts is not None and ts < min_ts:
            report.reject(line, "before_min_ts", row)
            continue
        if event_id in seen:
            report.duplicates += 1
            continue
        seen.add(event_id)
        u_codes.append(users(user_id))
        i_codes.append(items(item_id))
        t_codes.append(_TYPE_CODE[type_name])
        stamps.append(ts)
        qty.append(quantity)
        report.accepted += 1
    if not stamps:
        raise EmptyDataError(f"no usable events: {report.as_dict()}")
    log = EventLog(
        user_ids=users.table(),
        item_ids=items.table(),
        users=np.asarray(u_codes, dtype=np.int32),
        items=np.asarray(i_codes, dtype=np.int32),
        types=np.asarray(t_codes, dtype=np.int8),
        ts=np.asarray(stamps, dtype=np.float64),
        quantity=np.asarray(qty, dtype=np.float32),
    )
    return log, report


def _csv_rows(path: Path) -> Iterator[dict[str, str]]:
    try:
        with open_text(path) as fh:
            reader = csv.DictReader(fh)
            missing = {"event_id", "user_id", "item_id", "type", "ts"} - set(
                reader.fieldnames or ()
            )
            if missing:
                raise InputError(f"{path}: header lacks {sorted(missing)}")
            yield from reader
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    except csv.Error as exc:
        raise InputError(f"{path}: malformed CSV: {exc}") from exc


def read_events_csv(path: Path, *, until: float | None = None) -> tuple[EventLog, ReadReport]:
    """`read_events` over a canonical interactions CSV (optionally gzipped)."""
    return read_events(_csv_rows(path), until=until)
