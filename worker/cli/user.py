"""`pushrec user show|forget` and `pushrec rejected`, `pushrec metrics`: inspect state."""

from __future__ import annotations

import argparse
from typing import Any

from worker.cli.common import load_settings_with_redis, print_json


def register(subparsers: Any) -> None:
    user = subparsers.add_parser("user", help="inspect or erase one shopper")
    actions = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="print a shopper's state as JSON")
    show.add_argument("user_id")
    show.set_defaults(handler=show_user)
    forget = actions.add_parser("forget", help="erase a shopper now (right to erasure)")
    forget.add_argument("user_id")
    forget.set_defaults(handler=forget_user)

    rejected = subparsers.add_parser("rejected", help="print the latest rejected input")
    rejected.add_argument("--count", type=int, default=20)
    rejected.set_defaults(handler=show_rejected)

    metrics = subparsers.add_parser(
        "metrics", help="print the counters as JSON (for people), or all figures for Prometheus"
    )
    metrics.add_argument(
        "--prometheus",
        action="store_true",
        help="every figure in Prometheus text format, as the --metrics-port endpoints serve it",
    )
    metrics.set_defaults(handler=show_metrics)

    stats = subparsers.add_parser(
        "stats", help="per rule: sent, delivered, opens, clicks, conversions, lift over holdout"
    )
    stats.set_defaults(handler=show_stats)


def _runtime() -> Any:
    from worker.service.runtime import Runtime

    settings, _server = load_settings_with_redis()
    return Runtime.open(settings)


def show_user(args: argparse.Namespace) -> int:
    from worker.service.userview import decisions_view, user_view

    rt = _runtime()
    view = user_view(rt.redis, rt.keys, args.user_id, rt.settings.now())
    view["coupons"] = rt.coupons.holdings(args.user_id, rt.settings.now())
    view["decisions"] = decisions_view(rt.audit, rt.outbox, args.user_id)
    print_json(view)
    return 0


def forget_user(args: argparse.Namespace) -> int:
    from worker.service.ingest import erase_user

    print_json(erase_user(_runtime(), args.user_id))
    return 0


def show_rejected(args: argparse.Namespace) -> int:
    print_json(_runtime().rejected.recent(args.count))
    return 0


def show_stats(args: argparse.Namespace) -> int:
    rt = _runtime()
    print_json(rt.audit.stats([rule.name for rule in rt.settings.all_rules]))
    return 0


def show_metrics(args: argparse.Namespace) -> int:
    if not args.prometheus:
        print_json(_runtime().metrics.snapshot())
        return 0
    from worker.service.app import create_app
    from worker.service.exposition import PushrecCollector, prometheus_text

    settings, _server = load_settings_with_redis()
    collector = PushrecCollector.for_app(create_app(settings))
    try:
        print(prometheus_text(collector), end="")
    finally:
        collector.close()
    return 0
