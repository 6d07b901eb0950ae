"""`pushrec coupons import POOL FILE`: a shop's own codes into an imported pool.

The file is read row by row (`codes.read_code_file`). Rows that cannot be codes
(malformed, duplicated within the file) are checked before anything is written: unless
told to skip them, one such row stops the import with every bad line named. Then each code
is claimed across all pools (`{k:<code>}`, HSETNX, a thousand per round trip) and only a
code this pool now holds joins its available set; a code another pool holds, or one this
pool already issued, is a bad row too. Importing a file again is safe: a code this pool
holds but has not issued is made available again (healing an import cut off between the
two steps) and reported as already present.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from worker.coupon_config import CouponPool
from worker.coupons.codes import BadRow, CodeRow, read_code_file
from worker.store.client import StateRedis
from worker.store.keys import Keys

_CHUNK = 1000


@dataclass
class ImportReport:
    pool: str
    rows: int = 0
    added: int = 0
    bad: list[BadRow] = field(default_factory=list)
    stopped: bool = False  # malformed or duplicate rows and no --skip-bad: nothing written

    def as_dict(self, show: int = 50) -> dict[str, Any]:
        reasons = Counter(b.reason.partition(":")[0].partition(" of line")[0] for b in self.bad)
        return {
            "pool": self.pool,
            "rows": self.rows,
            "added": self.added,
            "bad": len(self.bad),
            "bad_by_reason": dict(reasons),
            "bad_rows": [{"line": b.line, "reason": b.reason} for b in self.bad[:show]],
            "bad_rows_not_shown": max(0, len(self.bad) - show),
            "stopped": self.stopped,
        }


def import_codes(
    client: StateRedis,
    keys: Keys,
    pool: CouponPool,
    lines: Iterable[str],
    *,
    skip_bad: bool = False,
) -> ImportReport:
    """Import the code file `lines` into `pool` (module doc); raises `ValueError` for a
    pool that mints its own codes."""
    if pool.source != "imported":
        raise ValueError(f"pool {pool.name!r} is {pool.source}: only imported pools take files")
    report = ImportReport(pool.name)
    rows: list[CodeRow] = []
    for row in read_code_file(lines):
        report.rows += 1
        if isinstance(row, BadRow):
            report.bad.append(row)
        else:
            rows.append(row)
    if report.bad and not skip_bad:
        report.stopped = True
        return report
    pk = keys.coupon_pool(pool.name)
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start : start + _CHUNK]
        pipe = client.pipeline(transaction=False)
        for row in chunk:
            pipe.hsetnx(keys.coupon_code(row.code), "pool", pool.name)
            pipe.hget(keys.coupon_code(row.code), "pool")
            pipe.hexists(pk.issued, row.code)
        replies = pipe.execute()
        add: list[str] = []
        for n, row in enumerate(chunk):
            claimed, holder, issued = replies[3 * n : 3 * n + 3]
            if claimed:
                add.append(row.code)
                report.added += 1
            elif holder != pool.name:
                report.bad.append(BadRow(row.line, f"already present: in pool {holder!r}"))
            elif issued:
                report.bad.append(BadRow(row.line, "already present: issued from this pool"))
            else:
                add.append(row.code)  # held, not issued: available again (idempotent)
                report.bad.append(BadRow(row.line, "already present: in this pool"))
        if add:
            client.sadd(pk.available, *add)
    report.bad.sort(key=lambda b: b.line)
    return report
