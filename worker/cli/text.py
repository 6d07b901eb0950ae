"""Plain-text tables and bar histograms for the terminal (the campaign and segment pages)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

BAR = "#"


def table(head: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "  ") -> list[str]:
    """Columns as wide as their widest cell; numbers right-aligned (with thousands
    separators), text left-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(head)]
    numeric = [bool(rows) and all(_is_number(r[i]) for r in rows) for i in range(len(head))]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return (indent + "  ".join(parts)).rstrip()

    return [line([str(h) for h in head]), *(line(r) for r in cells)]


def histogram(counts: Mapping[str, int], width: int = 40, indent: str = "  ") -> list[str]:
    """One bar per label, scaled to the largest count; a non-zero count shows at least
    one mark, a zero none."""
    if not counts:
        return [f"{indent}(none)"]
    most = max(counts.values()) or 1
    label_w = max(len(k) for k in counts)
    count_w = max(len(f"{n:,}") for n in counts.values())
    return [
        f"{indent}{label:<{label_w}}  {f'{n:,}':>{count_w}}  "
        f"{BAR * (max(1, round(n / most * width)) if n else 0)}".rstrip()
        for label, n in counts.items()
    ]


def hourly(counts: Mapping[str, int], max_rows: int = 72) -> dict[str, int]:
    """Counts keyed '%Y-%m-%d %H:00Z' with the empty hours between filled in (a gap shows
    as a gap); over `max_rows` hours, summed per day instead."""
    if not counts:
        return {}
    hours = {_hour(k): n for k, n in counts.items()}
    first, last = min(hours), max(hours)
    span = int((last - first) // 3600) + 1
    if span <= max_rows:
        filled = {first + 3600 * i: 0 for i in range(span)}
        filled.update(hours)
        return {_label(t, "%Y-%m-%d %H:00Z"): n for t, n in filled.items()}
    days: dict[str, int] = {}
    for t, n in sorted(hours.items()):
        day = _label(t, "%Y-%m-%d")
        days[day] = days.get(day, 0) + n
    return days


def when(ts: float | str | None, seconds: bool = False) -> str:
    """An epoch time as UTC text, '-' for none."""
    if ts in (None, ""):
        return "-"
    return _label(float(ts), "%Y-%m-%d %H:%M:%SZ" if seconds else "%Y-%m-%d %H:%MZ")


def _hour(label: str) -> float:
    return datetime.strptime(label, "%Y-%m-%d %H:00Z").replace(tzinfo=UTC).timestamp()


def _label(ts: float, fmt: str) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime(fmt)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cell(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)
