"""`pushrec coupons status [POOL]` and `pushrec coupons import POOL FILE`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from worker.cli.common import fail, load_settings_with_redis, print_json


def register(subparsers: Any) -> None:
    coupons = subparsers.add_parser("coupons", help="coupon pools: figures, code imports")
    actions = coupons.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = actions.add_parser(
        "status",
        help="per pool: issued, redeemed, expired, outstanding, face value, remaining budget, "
        "redemption rate per rule and campaign",
    )
    status.add_argument("pool", nargs="?", help="one pool (default: every pool)")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(handler=show_status)
    imp = actions.add_parser("import", help="add the shop's codes (CSV) to an imported pool")
    imp.add_argument("pool")
    imp.add_argument("file", type=argparse.FileType("r", encoding="utf-8-sig"))
    imp.add_argument(
        "--skip-bad",
        action="store_true",
        help="import the good rows of a file with malformed or duplicate rows (default: "
        "such a file imports nothing)",
    )
    imp.add_argument("--show", type=int, default=50, help="bad rows listed (all are counted)")
    imp.set_defaults(handler=import_file)


def _runtime() -> Any:
    from worker.service.runtime import Runtime

    settings, _server = load_settings_with_redis()
    return Runtime.open(settings)


def _pool_name(rt: Any, name: str) -> str:
    if name not in rt.coupons.pools:
        known = ", ".join(rt.coupons.pools) or "none: declare [[coupon_pools]] in the config"
        fail(f"no coupon pool {name!r} (pools: {known})")
    return name


def show_status(args: argparse.Namespace) -> int:
    rt = _runtime()
    names = [_pool_name(rt, args.pool)] if args.pool else None
    figures = rt.coupons.status(rt.settings.now(), names)
    if args.json:
        print_json(figures)
    else:
        print(status_table(figures, rt.settings.currency))
    return 0


def status_table(figures: list[dict[str, Any]], currency: str) -> str:
    """The figures of `Coupons.status` for a terminal: one block per pool."""
    lines: list[str] = []
    for p in figures:
        budget_value = (
            "no value budget" if p["remaining_value"] is None
            else f"{p['remaining_value']:,.2f} {currency} left"
        )  # fmt: skip
        lines += [
            f"pool {p['pool']} ({p['source']}): {p['remaining_count']:,} codes, {budget_value}"
            + (
                f", {p['available']:,} imported codes unissued"
                if p["available"] is not None
                else ""
            ),
            f"  issued {p['issued']:,} ({p['face_value_issued']:,.2f} {currency})   "
            f"redeemed {p['redeemed']:,} ({p['face_value_redeemed']:,.2f} {currency})   "
            f"expired {p['expired']:,}   outstanding {p['outstanding']:,}",
        ]
        if p["refused"]:
            lines.append(
                "  refused " + ", ".join(f"{k} {v:,}" for k, v in sorted(p["refused"].items()))
            )
        if p["by_source"]:
            lines.append(f"  {'source':<32} {'issued':>8} {'value':>12} {'redeemed':>9} "
                         f"{'expired':>8} {'rate':>6}")  # fmt: skip
            for source, s in p["by_source"].items():
                rate = "-" if s["redemption_rate"] is None else f"{s['redemption_rate']:.1%}"
                lines.append(f"  {source:<32} {s['issued']:>8,} {s['face_value_issued']:>12,.2f} "
                             f"{s['redeemed']:>9,} {s['expired']:>8,} {rate:>6}")  # fmt: skip
    return "\n".join(lines) if lines else "no coupon pools declared"


def import_file(args: argparse.Namespace) -> int:
    from worker.coupons import import_codes

    rt = _runtime()
    pool = rt.coupons.pools[_pool_name(rt, args.pool)]
    try:
        report = import_codes(rt.redis, rt.keys, pool, args.file, skip_bad=args.skip_bad)
    except ValueError as exc:
        fail(str(exc))
    finally:
        args.file.close()
    summary = report.as_dict(args.show)
    for row in summary["bad_rows"]:
        print(f"{args.file.name}:{row['line']}: {row['reason']}", file=sys.stderr)
    print_json(summary)
    if report.stopped:
        print(f"pushrec: {len(report.bad)} bad rows: nothing imported (fix them, or "
              "--skip-bad to import the good rows)", file=sys.stderr)  # fmt: skip
        return 1
    return 1 if report.bad else 0
