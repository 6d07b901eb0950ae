"""`pushrec segment show` and `pushrec campaign list|run|status|pause|resume|dry-run`."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from worker.cli.common import fail, load_settings_with_redis, print_json

if TYPE_CHECKING:
    from worker.campaigns import Campaign
    from worker.service.runtime import Runtime


def register(subparsers: Any) -> None:
    segment = subparsers.add_parser("segment", help="inspect the [[segments]] of the config")
    seg_sub = segment.add_subparsers(dest="segment_command", required=True)
    show = seg_sub.add_parser("show", help="size, RFM cut points and a sample of a segment")
    show.add_argument("name")
    show.add_argument("--sample", type=int, default=10)
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=segment_show)

    campaign = subparsers.add_parser("campaign", help="the [[campaigns]] of the config")
    sub = campaign.add_subparsers(dest="campaign_command", required=True)
    sub.add_parser("list", help="campaigns, their schedule and current run").set_defaults(
        handler=campaign_list
    )
    run = sub.add_parser("run", help="start a run now (the scheduler paces it out)")
    run.add_argument("name")
    run.add_argument(
        "--now",
        action="store_true",
        help="reach everyone now, ignoring local time and send window (policy still applies)",
    )
    run.set_defaults(handler=campaign_run)
    for command, handler, text in (
        ("status", campaign_status, "progress, outcomes by policy step, coupons, conversions"),
        ("pause", campaign_pause, "stop sending the current run until resumed"),
        ("resume", campaign_resume, "carry on sending a paused run"),
    ):
        parser = sub.add_parser(command, help=text)
        parser.add_argument("name")
        parser.set_defaults(handler=handler)
    dry = sub.add_parser("dry-run", help="what the next run would do, sending nothing")
    dry.add_argument("name")
    dry.add_argument("--now", action="store_true", help="as `campaign run --now` would")
    dry.add_argument("--json", action="store_true")
    dry.set_defaults(handler=campaign_dry_run)


def _runtime() -> Runtime:
    from worker.service.app import create_app

    settings, _server = load_settings_with_redis()
    return create_app(settings).runtime()


def _campaign(rt: Runtime, name: str) -> Campaign:
    found = next((c for c in rt.settings.campaigns if c.name == name), None)
    if found is None:
        known = sorted(c.name for c in rt.settings.campaigns)
        fail(f"no campaign {name!r} in the config (campaigns: {known})")
    return found


def _when(ts: float | str | None) -> str:
    if ts in (None, ""):
        return "-"
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def segment_show(args: argparse.Namespace) -> int:
    rt = _runtime()
    if args.name not in {s.name for s in rt.settings.segments}:
        fail(f"no segment {args.name!r} (segments: {sorted(s.name for s in rt.settings.segments)})")
    query = rt.segment_query()
    now = rt.settings.now()
    started = time.monotonic()
    size, sample = query.size_and_sample(args.name, now, args.sample)
    seconds = time.monotonic() - started
    cuts = query.cuts(now)
    out = {
        "segment": args.name,
        "size": size,
        "seconds": round(seconds, 3),
        "rfm_cuts": {
            "computed_at": _when(cuts.computed_at),
            "buyers": cuts.buyers,
            "r (last purchase)": [_when(c) for c in cuts.r],
            "f (orders)": list(cuts.f),
            "m (spent)": list(cuts.m),
        },
        "sample": sample,
    }
    if args.json:
        print_json(out)
        return 0
    print(f"segment {args.name}: {size:,} shoppers ({seconds:.2f} s)")
    print(f"RFM cut points over {cuts.buyers:,} buyers (computed {_when(cuts.computed_at)}):")
    for label, values in list(out["rfm_cuts"].items())[2:]:
        print(f"  {label:<18} {' | '.join(str(v) for v in values)}")
    print("sample: " + (", ".join(sample) if sample else "(none)"))
    return 0


def campaign_list(args: argparse.Namespace) -> int:
    from worker.campaigning.timing import next_occurrence

    rt = _runtime()
    runs = rt.runs()
    now = rt.settings.now()
    print(f"{'campaign':<24} {'segment':<20} {'schedule':<16} {'next run':<21} current run")
    for c in rt.settings.campaigns:
        status = runs.status(c.name)
        run = status.run
        current = f"{run.get('id', '-')} {run.get('state', '')}".strip()
        schedule = (c.schedule or "by hand") + (" local" if c.local_time else "")
        following = next_occurrence(c, now) if c.schedule and not c.ended(now) else None
        print(f"{c.name:<24} {c.segment:<20} {schedule:<16} {_when(following):<21} {current}")
    return 0


def campaign_run(args: argparse.Namespace) -> int:
    rt = _runtime()
    campaign = _campaign(rt, args.name)
    now = rt.settings.now()
    if campaign.ended(now):
        fail(f"campaign {campaign.name} ended at {campaign.ends}")
    run = rt.runs().start(campaign, now, now, immediate=args.now)
    print(f"campaign {campaign.name}: run {run.get('id')} {run.get('state')}, "
          f"audience {int(run.get('audience', 0)):,}; the scheduler sends it out")  # fmt: skip
    return 0


def campaign_status(args: argparse.Namespace) -> int:
    rt = _runtime()
    campaign = _campaign(rt, args.name)
    status = rt.runs().status(campaign.name)
    stats = rt.audit.stats([campaign.name])[campaign.name]
    print_json({
        "campaign": campaign.name,
        "run": status.run,
        "left_to_send": status.due_left,
        "outcomes": status.outcomes,
        "coupons_issued": status.outcomes.get("coupons", 0),
        "all_runs": stats,
        "history": status.history,
    })  # fmt: skip
    return 0


def campaign_pause(args: argparse.Namespace) -> int:
    rt = _runtime()
    print(rt.runs().set_paused(_campaign(rt, args.name).name, True))
    return 0


def campaign_resume(args: argparse.Namespace) -> int:
    rt = _runtime()
    print(rt.runs().set_paused(_campaign(rt, args.name).name, False))
    return 0


def campaign_dry_run(args: argparse.Namespace) -> int:
    from worker.campaigning.dry_run import dry_run
    from worker.campaigning.timing import next_occurrence

    rt = _runtime()
    campaign = _campaign(rt, args.name)
    now = rt.settings.now()
    anchor = now if args.now or not campaign.schedule else next_occurrence(campaign, now) or now
    started = time.monotonic()
    report = dry_run(rt.redis, rt.keys, rt.runs(), rt.segment_query(), rt.firer(), rt.catalog,
                     campaign, anchor, now, immediate=args.now)  # fmt: skip
    report["seconds"] = round(time.monotonic() - started, 3)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(render(report))
    return 0


def render(report: Mapping[str, Any]) -> str:
    """The dry run as a terminal page: figures, a table of outcomes, hourly histograms."""
    lines = [
        f"dry run of {report['campaign']} (segment {report['segment']}), run at "
        f"{_when(report['anchor'])}, computed in {report.get('seconds', 0):.1f} s",
        "",
        f"  audience          {report['audience']:>10,}",
        f"  sends             {report['sends']:>10,}",
        f"  held out          {report['held_out']:>10,}",
        f"  after end date    {report['after_end_date']:>10,}",
        f"  coupons           {report['coupons']:>10,}",
        f"  coupon face value {report['coupon_face_value']:>13,.2f}",
        "",
        f"  {'outcome (action.step)':<32}{'shoppers':>10}",
    ]
    lines += [f"  {k:<32}{v:>10,}" for k, v in report["outcomes"].items()]
    lines += ["", "  sends per hour (UTC)"]
    lines += _histogram(report["sends_per_hour_utc"])
    for zone, hours in report["sends_per_local_hour"].items():
        lines += ["", f"  sends per local hour, {zone}"]
        lines += _histogram({f"{int(h):02d}:00": n for h, n in hours.items()})
    for sample in report["samples"]:
        lines += ["", f"  to {sample['user_id']} via {','.join(sample['channels'])}:",
                  f"    {sample['title']}", f"    {sample['body']}"]  # fmt: skip
        lines += [f"    - {i['item_id']}: {i['reason']}" for i in sample["items"]]
    return "\n".join(lines)


def _histogram(counts: Mapping[str, int], width: int = 40) -> list[str]:
    if not counts:
        return ["    (none)"]
    most = max(counts.values())
    return [f"    {label:<18}{'#' * max(1, round(n / most * width)):<{width}} {n:,}"
            for label, n in counts.items()]  # fmt: skip
