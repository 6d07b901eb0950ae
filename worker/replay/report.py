"""A replay's results as one self-contained HTML file (plots inline as PNG data, no
network), a summary table for the terminal, and two runs side by side.

Plots are drawn with matplotlib (Agg, no display needed): pushes per rule over simulated
time, decisions by policy step, delivery outcomes by channel, event-to-push latency or
simulated delay, hit rate with intervals per rule.
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from indexing.sample import ATTRIBUTION

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;
max-width:1100px;padding:24px;color:#1d2733;background:#fafbfc;line-height:1.45}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 8px;border-bottom:1px
solid #d5dbe3;padding-bottom:4px}.muted{color:#5b6b7d;font-size:14px}
table{border-collapse:collapse;font-size:14px;margin:8px 0;background:#fff;width:100%}
th,td{border:1px solid #d5dbe3;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef2f6}.scroll{overflow-x:auto}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px}
.grid img,.wide img{width:100%;height:auto;background:#fff;border:1px solid #d5dbe3}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{background:#fff;border:1px solid
#d5dbe3;padding:10px 14px;min-width:150px}.card b{display:block;font-size:22px}
.timeline{font-size:13px;overflow-x:auto}.tag{background:#fff3cd;padding:1px 6px;
border-radius:4px;font-size:12px}footer{margin-top:32px;font-size:13px;color:#5b6b7d}
"""


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.grid(alpha=0.3)
    return fig, ax


def _pushes_over_time(results: dict[str, Any]) -> str:
    import matplotlib.dates as mdates

    fig, ax = _figure()
    for rule, stamps in sorted(results["timeline"].items()):
        per_day = Counter(int(t // 86_400) for t in stamps)
        days = sorted(per_day)
        dates = [datetime.fromtimestamp(d * 86_400, UTC) for d in days]
        ax.plot(dates, [per_day[d] for d in days], marker="o", ms=3, label=rule)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%d %b"))  # type: ignore[no-untyped-call]
    ax.set_title("Pushes delivered per rule and simulated day")
    ax.set_xlabel("simulated date (the history's own)")
    ax.set_ylabel("pushes per day")
    if results["timeline"]:
        ax.legend(fontsize=8)
    return _png(fig)


def _decisions_by_step(results: dict[str, Any]) -> str:
    fig, ax = _figure()
    rows = sorted(results["decisions_by_step"].items(), key=lambda kv: kv[1])
    labels = [k.replace(".", ": ") for k, _ in rows]
    ax.barh(labels, [v for _, v in rows], color="#4c78a8")
    ax.set_title("Rule firings by outcome and the step that decided it")
    ax.set_xlabel("firings")
    ax.tick_params(axis="y", labelsize=8)
    return _png(fig)


def _channel_outcomes(results: dict[str, Any]) -> str:
    fig, ax = _figure()
    channels = sorted({r["channel"] for r in results["channel_outcomes"]})
    outcomes = sorted({r["outcome"] for r in results["channel_outcomes"]})
    left = [0] * len(channels)
    for outcome in outcomes:
        values = [
            sum(r["count"] for r in results["channel_outcomes"]
                if r["channel"] == c and r["outcome"] == outcome)
            for c in channels
        ]  # fmt: skip
        ax.barh(channels, values, left=left, label=outcome)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_title("Delivery outcomes by channel")
    ax.set_xlabel("messages")
    if channels:
        ax.legend(fontsize=8)
    return _png(fig)


def _latency(results: dict[str, Any]) -> str:
    fig, ax = _figure()
    if results["latency_s"]:
        ms = [1000 * v for v in results["latency_s"]]
        ax.hist(ms, bins=40, color="#54a24b")
        ax.set_title("Event to push, rules without delay (wall clock)")
        ax.set_xlabel("milliseconds from the event sent to the gateway call")
        ax.set_ylabel("messages")
    else:
        delays = {
            rule: values + results.get("simulated_delay_deferred_s", {}).get(rule, [])
            for rule, values in results["simulated_delay_s"].items()
        }
        for rule, values in sorted(delays.items()):
            ax.hist([v / 3600 for v in values], bins=30, alpha=0.6, label=rule)
        ax.set_title("Trigger to push in simulated time")
        ax.set_xlabel("simulated hours from the trigger to the first gateway call")
        ax.set_ylabel("messages")
        if delays:
            ax.legend(fontsize=8)
    return _png(fig)


def _hit_rates(results: dict[str, Any]) -> str:
    fig, ax = _figure()
    names = sorted(results["rules"])
    for offset, cell, colour in ((-0.18, "treated", "#4c78a8"), (0.18, "holdout", "#f58518")):
        xs, ys, lo, hi = [], [], [], []
        for n, name in enumerate(names):
            rate = results["rules"][name]["hit_rate"][cell]
            if rate["rate"] is None:
                continue
            xs.append(n + offset)
            ys.append(100 * rate["rate"])
            lo.append(100 * (rate["rate"] - rate["ci"][0]))
            hi.append(100 * (rate["ci"][1] - rate["rate"]))
        ax.bar(xs, ys, width=0.34, color=colour, label=cell, yerr=[lo, hi], capsize=3)
    ax.set_xticks(range(len(names)), names, fontsize=8, rotation=15)
    ax.set_title("Bought a pushed item within 7 days (95% interval)")
    ax.set_ylabel("% of messages sent (treated) or held out")
    ax.legend(fontsize=8)
    return _png(fig)


def _fmt_rate(rate: dict[str, Any]) -> str:
    if rate["rate"] is None:
        return "n/a"
    return f"{100 * rate['rate']:.1f}% ({rate['hits']}/{rate['n']})"


def _fmt_lift(h: dict[str, Any]) -> str:
    if h.get("lift") is None:
        return "n/a"
    return f"{100 * h['lift']:+.0f}% [{100 * h['low']:+.0f}%, {100 * h['high']:+.0f}%]"


def summary_table(results: dict[str, Any]) -> str:
    """Per rule, as plain text for the terminal."""
    head = ("rule", "decided", "delivered", "held back (top)", "push/shopper-day",
            "coupons", "hit rate", "holdout", "lift [95%]")  # fmt: skip
    rows = [head]
    for name, r in sorted(results["rules"].items()):
        top = sorted(r["held_back_by"].items(), key=lambda kv: -kv[1])[:2]
        rows.append(
            (
                name,
                str(r["decided"]),
                str(r["delivered"]),
                ", ".join(f"{k} {v}" for k, v in top) or "-",
                f"{r['pushes_per_shopper_day']['mean']:.2f}",
                f"{r['coupons']['issued']} ({r['coupons']['face_value']:.2f})",
                _fmt_rate(r["hit_rate"]["treated"]),
                _fmt_rate(r["hit_rate"]["holdout"]),
                _fmt_lift(r["hit_rate"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


_COMPARED: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("delivered", lambda r: str(r["delivered"])),
    ("push/shopper-day", lambda r: f"{r['pushes_per_shopper_day']['mean']:.2f}"),
    ("held back", lambda r: str(sum(r["held_back_by"].values()))),
    ("coupon value", lambda r: f"{r['coupons']['face_value']:.2f}"),
    ("hit rate", lambda r: _fmt_rate(r["hit_rate"]["treated"])),
    ("lift", lambda r: _fmt_lift(r["hit_rate"])),
)


def compare_table(a: dict[str, Any], b: dict[str, Any], name_a: str, name_b: str) -> str:
    """Two runs' per-rule figures side by side."""
    lines = [f"{'rule':24s} {'figure':22s} {name_a[:20]:>20s} {name_b[:20]:>20s}"]
    for rule in sorted(set(a["rules"]) | set(b["rules"])):
        ra, rb = a["rules"].get(rule), b["rules"].get(rule)
        for label, get in _COMPARED:
            va = get(ra) if ra else "-"
            vb = get(rb) if rb else "-"
            lines.append(f"{rule:24s} {label:22s} {va:>20s} {vb:>20s}")
    for side, run in ((name_a, a), (name_b, b)):
        if run.get("overrides"):
            lines.append(f"{side}: --set {' --set '.join(run['overrides'])}")
    return "\n".join(lines)


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<div class='scroll'><table><tr>{th}</tr>{body}</table></div>"


def _examples(results: dict[str, Any]) -> str:
    parts = []
    for ex in results["examples"]:
        s = ex["synthetic"]
        grouped: dict[tuple[str, str], list[str]] = {}
        for e in ex["events"]:  # an order's lines share a minute: one row per order
            grouped.setdefault((_when(e["ts"]), e["type"]), []).append(e.get("item_id") or "")
        rows = [
            [when, "event", f"{kind} x{len(items)}" if len(items) > 1 else kind,
             ", ".join(items[:6]) + (" ..." if len(items) > 6 else "")]
            for (when, kind), items in grouped.items()
        ]  # fmt: skip
        rows += [
            [_when(d["ts"]), f"rule {d['rule']}", f"{d['action']}"
             + (f" ({d['delivery']})" if d.get("delivery") else ""),
             d.get("message") or d.get("reason") or ""]
            for d in ex["decisions"]
        ]  # fmt: skip
        rows.sort(key=lambda r: r[0])
        parts.append(
            f"<h3>Shopper {html.escape(ex['user_id'])} "
            f"<span class='tag'>synthetic device: {html.escape(s['channel'])}, "
            f"{'consent' if s['consent'] else 'no consent'}, {html.escape(s['timezone'])}"
            f"{', quiet hours' if s['quiet_hours'] else ''}</span></h3>"
            f"<div class='timeline'>{_table(['when', 'what', 'detail', 'item / message'], rows)}"
            "</div>"
        )
    return "".join(parts) or "<p class='muted'>No shopper received a message.</p>"


_RULE_HEAD = [
    "rule", "kind", "delay", "decided", "delivered", "held back by", "pushes per shopper-day",
    "coupons / face value", "hit rate (7 d)", "holdout", "lift [95%]",
]  # fmt: skip


def write_report(results: dict[str, Any], path: Any) -> Any:
    """Write the HTML report to `path` (a Path) and return it."""
    rep = results["replayed"]
    inp = results["input"]
    shoppers = results["shoppers"]
    delivered = sum(r["delivered"] for r in results["rules"].values())
    cards = [
        ("events replayed", f"{rep['events_sent']:,}"),
        ("simulated span", f"{_day(rep['from'])} to {_day(rep['to'])}"),
        (
            "speed",
            f"{rep['speed']:,.0f}x the wall clock"
            + (" on average (as fast as possible)" if rep.get("as_fast_as_possible") else ""),
        ),
        ("pushes delivered", f"{delivered:,}"),
        ("wall-clock time", f"{rep['wall_s']:.0f} s"),
    ]
    rule_rows = []
    for name, r in sorted(results["rules"].items()):
        per_day = r["pushes_per_shopper_day"]
        rule_rows.append(
            [name, r["kind"], f"{r['delay_s'] / 3600:g} h", r["decided"], r["delivered"],
             ", ".join(f"{k} {v}" for k, v in sorted(r["held_back_by"].items())) or "-",
             f"{per_day['mean']:.2f} (max {per_day['max']})",
             f"{r['coupons']['issued']} / {r['coupons']['face_value']:.2f}",
             _fmt_rate(r["hit_rate"]["treated"]), _fmt_rate(r["hit_rate"]["holdout"]),
             _fmt_lift(r["hit_rate"])]
        )  # fmt: skip
    rejected = {**inp.get("rejected_before_sending", {}), **inp.get("rejected_by_workers", {})}
    input_rows = [
        ["rows read", f"{inp['rows']:,}"],
        ["the past (state and index)", f"{inp.get('past', 0):,}"],
        ["replayed", f"{inp.get('replayed', 0):,}"],
        ["not replayed (beyond the events asked for)", f"{inp.get('not_replayed', 0):,}"],
        ["applied by the workers (past and replayed)", f"{inp['applied']:,}"],
        ["duplicates", f"{inp['duplicates']:,}"],
        *[[f"rejected: {k}", f"{v:,}"] for k, v in sorted(rejected.items())],
    ]
    note = " (interrupted: figures cover what was replayed)" if rep["interrupted"] else ""
    doc = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{html.escape(results["title"])}</title><style>{_CSS}</style></head><body>
<h1>{html.escape(results["title"])}</h1>
<p class="muted">Real worker processes, the scheduler and local gateways ran the history
on a simulated clock{html.escape(note)}. Devices and preferences are
<b>synthetic</b>: {shoppers["synthetic"]:,} shoppers
({", ".join(f"{v} {k}" for k, v in sorted(shoppers["channels"].items()))});
{shoppers["without_consent"]} without marketing consent, {shoppers["quiet_hours"]} with
quiet hours, {shoppers["gone_tokens"]} tokens the gateway answers as gone. No message left
this machine.</p>
<div class="cards">{
        "".join(
            f"<div class='card'>{html.escape(k)}<b>{html.escape(v)}</b></div>" for k, v in cards
        )
    }</div>
<h2>Per rule</h2>
{
        _table(
            [
                "rule",
                "kind",
                "delay",
                "decided",
                "delivered",
                "held back by",
                "pushes per shopper-day",
                "coupons / face value",
                "hit rate (7 d)",
                "holdout",
                "lift [95%]",
            ],
            rule_rows,
        )
    }
<p class="muted">Hit rate: share of messages sent to a gateway whose shopper bought a pushed
item within 7 simulated days; holdout: the same for the messages the rule made for the
shoppers it held out, stopped at that same point after the same checks and caps.
Lift = hit rate / holdout rate - 1, 95% interval on the log ratio. Coupon face value:
as issued (the percent off the lead item's price at the time).</p>
<div class="grid"><img alt="pushes per rule over time" src="{_pushes_over_time(results)}">
<img alt="decisions by step" src="{_decisions_by_step(results)}">
<img alt="delivery outcomes by channel" src="{_channel_outcomes(results)}">
<img alt="latency" src="{_latency(results)}"></div>
<div class="wide"><img alt="hit rates" src="{_hit_rates(results)}" style="max-width:640px"></div>
<h2>Input</h2>{_table(["", "count"], input_rows)}
<h2>Example shoppers</h2>{_examples(results)}
<footer>Data: {html.escape(ATTRIBUTION)}
(<a href="https://creativecommons.org/licenses/by/4.0/">licence</a>). Shopper devices,
consent and quiet hours are synthetic. Generated by pushrec.</footer>
</body></html>"""
    path.write_text(doc)
    return path
