"""Coupon codes as pushrec keys them, and the shop's code files read row by row.

A code's canonical form is upper case without spaces or dashes, whoever minted it:
``7kq2-m9xd-4tgb-r`` and ``7KQ2M9XD4TGBR`` are one code, and so are a shop's
``SUMMER-10`` and ``summer10`` (a file holding both has a duplicate). At checkout a
generated code is also looked up with the usual confusions undone (O->0, I/L->1).

A shop's file is CSV, one code per row: the first column, or the column headed ``code``
when the first row is a header. Each row is `CodeRow` (its 1-based line and the code) or
`BadRow` (its line and why): malformed, or a duplicate of an earlier line.
"""

from __future__ import annotations

import contextlib
import csv
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from push.coupons import normalize_coupon
from push.errors import CouponError

CODE_MIN, CODE_MAX = 4, 64
_CANONICAL = re.compile(rf"^[A-Z0-9_]{{{CODE_MIN},{CODE_MAX}}}$")


def canonical_code(text: str) -> str:
    """The canonical form of `text`; raises `ValueError` saying why it is not a code."""
    raw = text.strip().upper().replace("-", "").replace(" ", "")
    if not _CANONICAL.match(raw):
        if not raw:
            raise ValueError("empty code")
        bad = "".join(sorted({c for c in raw if not (c.isascii() and (c.isalnum() or c == "_"))}))
        if bad:
            raise ValueError(f"characters outside A-Z 0-9 _: {bad!r}")
        raise ValueError(f"{len(raw)} symbols, codes have {CODE_MIN} to {CODE_MAX}")
    return raw


def lookup_forms(text: str) -> list[str]:
    """The canonical forms a checkout's `text` may be stored under, most literal first;
    empty when it cannot be a code."""
    try:
        forms = [canonical_code(text)]
    except ValueError:
        return []
    with contextlib.suppress(CouponError):  # a generated code, retyped with a confusion
        forms.append(normalize_coupon(forms[0], check=False))
    return list(dict.fromkeys(forms))


@dataclass(frozen=True)
class CodeRow:
    line: int
    code: str  # canonical


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str


def read_code_file(lines: Iterable[str]) -> Iterator[CodeRow | BadRow]:
    """Each data row of a shop's code file, in order (module doc). Blank lines are
    skipped; every other row yields exactly one `CodeRow` or `BadRow`."""
    seen: dict[str, int] = {}
    column = 0
    reader = csv.reader(lines)
    for n, row in enumerate(reader, start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        if n == 1 and "code" in (c.lower() for c in cells):
            column = [c.lower() for c in cells].index("code")
            continue
        if column >= len(cells):
            yield BadRow(reader.line_num, f"no column {column + 1}")
            continue
        try:
            code = canonical_code(cells[column])
        except ValueError as exc:
            yield BadRow(reader.line_num, f"malformed: {exc}")
            continue
        if code in seen:
            yield BadRow(reader.line_num, f"duplicate of line {seen[code]}")
            continue
        seen[code] = reader.line_num
        yield CodeRow(reader.line_num, code)
