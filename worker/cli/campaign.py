"""`pushrec segment show` and `pushrec campaign list|run|status|pause|resume|dry-run`."""

from __future__ import annotations

import argparse
import json
import os
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from worker.cli import text
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
    status = sub.add_parser("status", help="progress, outcomes by policy step, coupons, "
                            "conversions, missed runs")  # fmt: skip
    status.add_argument("name")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=campaign_status)
    for command, handler, about in (
        ("pause", campaign_pause, "stop sending the current run until resumed"),
        ("resume", campaign_resume, "carry on sending a paused run"),
    ):
        parser = sub.add_parser(command, help=about)
        parser.add_argument("name")
        parser.set_defaults(handler=handler)
    dry = sub.add_parser("dry-run", help="what the next run would do, sending nothing")
    dry.add_argument("name")
    dry.add_argument("--now", action="store_true", help="as `campaign run --now` would")
    dry.add_argument("--json", action="store_true")
    dry.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes firing an audience of 5,000 or more (default: the CPU count)",
    )
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


def segment_show(args: argparse.Namespace) -> int:
    rt = _runtime()
    segment = next((s for s in rt.settings.segments if s.name == args.name), None)
    if segment is None:
        fail(f"no segment {args.name!r} (segments: {sorted(s.name for s in rt.settings.segments)})")
    query = rt.segment_query()
    now = rt.settings.now()
    started = time.monotonic()
    size, sample = query.size_and_sample(args.name, now, args.sample)
    seconds = time.monotonic() - started
    cuts = query.cuts(now)
    given = segment.model_dump(by_alias=True, exclude_defaults=True, exclude={"name"})
    out = {
        "segment": args.name,
        "conditions": given,
        "size": size,
        "seconds": round(seconds, 3),
        "rfm_cuts": {
            "computed_at": text.when(cuts.computed_at, seconds=True),
            "buyers": cuts.buyers,
            "r (last purchase)": [text.when(c, seconds=True) for c in cuts.r],
            "f (orders)": list(cuts.f),
            "m (spent)": list(cuts.m),
        },
        "sample": sample,
    }
    if args.json:
        print_json(out)
        return 0
    print(f"segment {args.name}: {size:,} shoppers (queried in {seconds:.2f} s)")
    print("  " + ", ".join(f"{k} = {_toml(v)}" for k, v in given.items()))
    print()
    print(f"RFM scores over {cuts.buyers:,} buyers (cut points computed "
          f"{text.when(cuts.computed_at)}; a value on a cut takes the lower score)")  # fmt: skip
    print("\n".join(_rfm_bands(cuts.r, cuts.f, cuts.m, rt.settings.currency)))
    print()
    print(f"sample ({len(sample)} of {size:,}):")
    print(textwrap.fill(", ".join(sample) or "(none)", 88, initial_indent="  ",
                        subsequent_indent="  "))  # fmt: skip
    return 0


def _toml(value: Any) -> str:
    """A condition's value as it is written in the config file (30, not 30.0)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def _rfm_bands(
    r: Sequence[float], f: Sequence[float], m: Sequence[float], currency: str
) -> list[str]:
    """Score 1-5 per dimension as the range of values it covers."""
    if not (r and f and m):
        return ["  (no buyers indexed yet)"]

    def band(cuts: Sequence[float], score: int, show: Callable[[float], str]) -> str:
        if score == 5:
            return f"over {show(cuts[3])}"
        return f"up to {show(cuts[score - 1])}"

    rows = [
        [str(score), band(r, score, text.when), band(f, score, lambda v: f"{v:g}"),
         band(m, score, lambda v: f"{v:,.2f} {currency}")]
        for score in range(1, 6)
    ]  # fmt: skip
    return text.table(["score", "r: last purchase", "f: orders", "m: spent"], rows)


def campaign_list(args: argparse.Namespace) -> int:
    from worker.campaigning.timing import next_occurrence

    rt = _runtime()
    runs = rt.runs()
    now = rt.settings.now()
    rows = []
    for c in rt.settings.campaigns:
        run = runs.status(c.name).run
        following = next_occurrence(c, now) if c.schedule and not c.ended(now) else None
        current = f"{run['id']} {run.get('state', '')}" if run.get("id") else "-"
        if run.get("state") in ("sending", "paused"):
            current += f" ({int(run.get('dispatched', 0)):,}/{int(run.get('audience', 0)):,})"
        rows.append([
            c.name + ("" if c.enabled else " (disabled)"),
            c.segment,
            _schedule(c),
            c.send_window or "-",
            f"{c.rate_per_s:g}/s" if c.rate_per_s else "-",
            "ended" if c.ended(now) else text.when(following),
            current,
        ])  # fmt: skip
    head = ["campaign", "segment", "schedule", "window", "rate", "next run (UTC)", "current run"]
    print("\n".join(text.table(head, rows, indent="")))
    return 0


def _schedule(c: Campaign) -> str:
    return (c.schedule or "by hand") + (" local" if c.local_time else "")


def campaign_run(args: argparse.Namespace) -> int:
    rt = _runtime()
    campaign = _campaign(rt, args.name)
    now = rt.settings.now()
    if campaign.ended(now):
        fail(f"campaign {campaign.name} ended at {campaign.ends}")
    runs = rt.runs()
    current = runs.status(campaign.name).run
    if runs.active(campaign.name):
        fail(f"campaign {campaign.name}: run {current['id']} is {current['state']}; "
             "wait for it to finish (`pushrec campaign status`)", 1)  # fmt: skip
    run = runs.start(campaign, now, now, immediate=args.now)
    print(f"campaign {campaign.name}: run {run['id']} {run['state']}, audience "
          f"{int(run.get('audience', 0)):,}, planned {int(run.get('planned', 0)):,}; "
          "the scheduler sends it out")  # fmt: skip
    return 0


def campaign_status(args: argparse.Namespace) -> int:
    from worker.campaigning.runs import trigger_id

    rt = _runtime()
    campaign = _campaign(rt, args.name)
    status = rt.runs().status(campaign.name)
    stats = rt.audit.stats([campaign.name])[campaign.name]
    outcomes = dict(status.outcomes)
    coupons = outcomes.pop("coupons", 0)
    report = {
        "campaign": campaign.name,
        "segment": campaign.segment,
        "schedule": _schedule(campaign),
        "ends": campaign.ends.isoformat() if campaign.ends else None,
        "missed_runs": {"grace_s": campaign.grace_s, "policy": MISSED_RUN_POLICY},
        "run": status.run,
        "trigger_id": trigger_id(status.run["id"]) if status.run.get("id") else None,
        "left_to_send": status.due_left,
        "outcomes": outcomes,
        "coupons_issued": coupons,
        "all_runs": stats,
        "history": status.history,
    }
    if args.json:
        print_json(report)
    else:
        print(render_status(report))
    return 0


MISSED_RUN_POLICY = (
    "an occurrence missed while no scheduler ran starts late if at most grace_s old; "
    "older ones are skipped and recorded"
)


def render_status(report: Mapping[str, Any]) -> str:
    """`campaign status` as a terminal page."""
    run, outcomes = report["run"], report["outcomes"]
    lines = [
        f"campaign {report['campaign']} (segment {report['segment']}, {report['schedule']}"
        f"{', ends ' + report['ends'] if report['ends'] else ''})",
        f"missed runs: started late within {report['missed_runs']['grace_s']:,} s "
        "(grace_s), else skipped and recorded below",
        "",
    ]
    if not run.get("id"):
        lines.append("no run yet")
    else:
        audience = int(run.get("audience", 0))
        reached = sum(outcomes.values())
        share = reached / audience if audience else 1.0
        now_flag = " (--now)" if run.get("immediate") == "1" else ""
        lines += [
            f"run {run['id']}: {run.get('state', '?')}, started "
            f"{text.when(run.get('started_at'))}{now_flag}",
            f"  audience {audience:,}, dispatched {int(run.get('dispatched', 0)):,}, "
            f"left to send {report['left_to_send']:,}, outcomes counted {reached:,}",
            f"  progress [{text.BAR * round(share * 30):<30}] {100 * share:.0f}%",
            "",
        ]
        rows: list[list[object]] = [
            [o, n, f"{100 * n / reached:.1f}%" if reached else "-"]
            for o, n in sorted(outcomes.items(), key=lambda kv: -kv[1])
        ]
        rows.append(["coupons issued", report["coupons_issued"], ""])
        lines += text.table(["outcome (action.step)", "shoppers", "share"], rows)
    s = report["all_runs"]
    lift = f"{100 * s['lift']:+.1f}%" if s.get("lift") is not None else "n/a"
    lines += [
        "",
        "all runs:",
        *text.table(
            ["fired", "queued", "delivered", "opened", "clicked", "converted", "held out",
             "held-out converted", "lift"],
            [[s["fired"], s["queued"], s["delivered"], s["opened"],
              s["clicked"], s["converted"], s["held_out"], s["held_out_converted"], lift]],
        ),
    ]  # fmt: skip
    if report["history"]:
        rows = [[h.get("id", "?"), h.get("state", "?"), text.when(h.get("anchor")),
                 h.get("reason") or _outcome_note(h)] for h in report["history"]]  # fmt: skip
        lines += ["", "history (latest first):"]
        lines += text.table(["run", "state", "anchor", "note"], rows)
    return "\n".join(lines)


def _outcome_note(entry: Mapping[str, Any]) -> str:
    done = entry.get("dispatched")
    return f"{int(done):,} of {int(entry.get('audience', 0)):,} dispatched" if done else ""


def campaign_pause(args: argparse.Namespace) -> int:
    return _pause(args.name, True)


def campaign_resume(args: argparse.Namespace) -> int:
    return _pause(args.name, False)


def _pause(name: str, paused: bool) -> int:
    rt = _runtime()
    campaign = _campaign(rt, name)
    runs = rt.runs()
    before = runs.status(campaign.name)
    state = runs.set_paused(campaign.name, paused)
    wanted, verb = ("paused", "paused") if paused else ("sending", "resumed")
    run = before.run.get("id", "-")
    if state != wanted:
        fail(f"campaign {campaign.name}: run {run} is {state}, nothing to "
             f"{'pause' if paused else 'resume'}", 1)  # fmt: skip
    done = f"already {wanted}" if before.run.get("state") == wanted else verb
    print(f"campaign {campaign.name}: run {run} {done}, "
          f"{before.due_left:,} left to send")  # fmt: skip
    return 0


def campaign_dry_run(args: argparse.Namespace) -> int:
    from worker.campaigning.dry_run import dry_run
    from worker.campaigning.timing import next_occurrence
    from worker.service.dry_run_pool import pooled

    rt = _runtime()
    campaign = _campaign(rt, args.name)
    now = rt.settings.now()
    anchor = now if args.now or not campaign.schedule else next_occurrence(campaign, now) or now
    started = time.monotonic()
    pool = pooled(rt.settings, args.workers) if args.workers > 1 else None
    report = dry_run(rt.redis, rt.keys, rt.runs(), rt.segment_query(), rt.firer(),
                     campaign, anchor, now, immediate=args.now, fire=pool)  # fmt: skip
    report["seconds"] = round(time.monotonic() - started, 3)
    report["currency"] = rt.settings.currency
    report["local_time"] = campaign.local_time and not args.now
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(render(report))
    return 0


def render(report: Mapping[str, Any]) -> str:
    """The dry run as a terminal page: figures, a table of outcomes with the reason of
    each, hourly histograms, samples."""
    audience = report["audience"]
    anchor = text.when(report["anchor"])
    if report.get("local_time"):
        anchor += " (the cron's wall time at UTC+14; each shopper at that time locally)"
    lines = [
        f"dry run of {report['campaign']} (segment {report['segment']}): nothing was sent",
        f"  run anchored at {anchor}",
        f"  computed in {report.get('seconds', 0):.1f} s",
        "",
        *text.table(["audience", "sends", "held out", "after end date", "coupons",
                     f"coupon face value ({report.get('currency', '')})"],
                    [[audience, report["sends"], report["held_out"], report["after_end_date"],
                      report["coupons"], float(report["coupon_face_value"])]]),
        "",
    ]  # fmt: skip
    reasons = report.get("outcome_reasons", {})
    rows: list[list[object]] = [
        [o, n, f"{100 * n / audience:.1f}%" if audience else "-", reasons.get(o, "")[:60]]
        for o, n in sorted(report["outcomes"].items(), key=lambda kv: -kv[1])
    ]
    lines += text.table(
        ["outcome (action.step)", "shoppers", "share", "reason (most common)"], rows
    )
    lines += ["", "sends per hour (UTC):"]
    lines += text.histogram(text.hourly(report["sends_per_hour_utc"]))
    zones = report["sends_per_local_hour"]
    if zones:
        local: dict[int, int] = {}
        for hours in zones.values():
            for hour, n in hours.items():
                local[int(hour)] = local.get(int(hour), 0) + n
        lines += ["", "sends per local hour (every timezone):"]
        lines += text.histogram({f"{h:02d}:00": local[h] for h in sorted(local)})
        by_size = sorted(zones.items(), key=lambda kv: -sum(kv[1].values()))
        rows = [[zone, sum(h.values()), ", ".join(f"{int(k):02d}:00" for k in sorted(h, key=int))]
                for zone, h in by_size]  # fmt: skip
        lines += ["", *text.table(["timezone", "sends", "local hours"], rows)]
    for sample in report["samples"]:
        lines += ["", f"to {sample['user_id']} via {', '.join(sample['channels'])}:",
                  f"  {sample['title']}", f"  {sample['body']}"]  # fmt: skip
        lines += [f"    {i['item_id']}: {i['reason']}" for i in sample["items"]]
    return "\n".join(lines)
