"""What a replay did, read back from its Redis and summed up per rule: the answers a
growth team wants before switching rules on. A JSON-able dict (`--json`), the input of
the report and of `pushrec replay compare`.

Per rule: triggers decided, messages queued and delivered, what held the rest back
(consent, caps, quiet hours, no-repeat, cooldown, holdout, the rule's condition), pushes
per shopper per day, coupons and their face value, and the hit rate: how often the
shopper bought a pushed item within 7 days, beside the holdout cell's rate for the items
the rule would have pushed (lift with a 95% interval). Both cells count messages at the
one point where the push worker either calls the gateway (treated) or stops a holdout
message, after the same checks and caps: shoppers who would have been contacted, once
per message. All times are the history's own.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from typing import Any

from worker.replay.config import rules_of
from worker.replay.engine import ReplayRun
from worker.service.runtime import Runtime

HIT_WINDOW_S = 7 * 86_400
_EXAMPLES = 4


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """95% Wilson interval of a rate (None without trials)."""
    if n == 0:
        return None
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # around the rate itself: rounding can put a bound of 0 hits a hair above 0
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def lift_interval(h1: int, n1: int, h0: int, n0: int, z: float = 1.96) -> dict[str, Any]:
    """Relative lift of rate h1/n1 over h0/n0 with a 95% interval (log rate ratio, a half
    hit added to empty cells); none when either cell has no trials or neither a hit."""
    if n1 == 0 or n0 == 0 or h1 == h0 == 0:
        return {"lift": None, "low": None, "high": None}
    a, b = h1 + (0.5 if h1 == 0 or h0 == 0 else 0), h0 + (0.5 if h1 == 0 or h0 == 0 else 0)
    ratio = (a / n1) / (b / n0)
    se = math.sqrt(max(0.0, 1 / a - 1 / n1 + 1 / b - 1 / n0))
    return {
        "lift": ratio - 1,
        "low": math.exp(math.log(ratio) - z * se) - 1,
        "high": math.exp(math.log(ratio) + z * se) - 1,
    }


def _held_back_by(decision: dict[str, Any]) -> str:
    """The step that stopped a firing: its last policy step, else the rule's condition."""
    steps = (decision.get("policy") or {}).get("steps") or []
    if steps:
        return str(steps[-1]["step"])
    return "condition"


def _purchases(run: ReplayRun) -> dict[str, list[tuple[float, str]]]:
    """Per shopper, their replayed purchases (history time, item), in time order."""
    out: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for event_id in run.sent_at:
        row = run.replayed.get(event_id)
        if row is not None and row["type"] == "purchase" and row.get("item_id"):
            out[row["user_id"]].append((row["ts"], row["item_id"]))
    for rows in out.values():
        rows.sort()
    return out


def _first_sent(run: ReplayRun) -> dict[tuple[str, float], float]:
    """Per (shopper, event time as the workers saw it), when its first event was sent
    (wall clock): a trigger names its event's time, and the lines of an order share one."""
    out: dict[tuple[str, float], float] = {}
    for event_id, sent in run.sent_at.items():
        row = run.replayed.get(event_id)
        if row is not None:
            key = (str(row["user_id"]), row["ts"] + run.shift_s)
            out[key] = min(sent, out.get(key, sent))
    return out


def _send_time_step(state: str, reason: str) -> str:
    """The step that stopped a queued message at send time (`sender.py`'s reasons)."""
    if state == "held_out":
        return "holdout"
    if reason.startswith("cap reached at send time: "):
        return reason.removeprefix("cap reached at send time: ")  # cooldown, cap_day, ...
    if reason.startswith("consent"):
        return "consent"
    if reason.startswith("no_repeat"):
        return "no_repeat"
    return "send_time"


def _hit(buys: list[tuple[float, str]], at: float, items: list[str]) -> bool:
    wanted = set(items)
    return any(at < ts <= at + HIT_WINDOW_S and item in wanted for ts, item in buys)


def collect(run: ReplayRun, rt: Runtime) -> dict[str, Any]:
    """Read every shopper's decisions and messages; sum them up per rule."""
    shift = run.shift_s
    rules = {r.name: r for r in rules_of(run.plan.config) if r.enabled}
    buys = _purchases(run)
    users = sorted(run.shoppers)
    pipe = rt.redis.pipeline(transaction=False)
    for user in users:
        pipe.lrange(rt.keys.user(user).decisions, 0, -1)
    final: dict[tuple[str, str, str], dict[str, Any]] = {}
    deferred: set[tuple[str, str, str]] = set()
    for user, rows in zip(users, pipe.execute(), strict=True):
        for raw in reversed(rows):  # oldest first: a deferred firing's last word wins
            d = json.loads(raw)
            if "trigger" not in d or "rule" not in d:
                continue
            key = (d["rule"], user, d["trigger"]["id"])
            final[key] = {**d, "user_id": user, "was_deferred": key in deferred}
            if d.get("action") == "defer":
                deferred.add(key)
    decisions = list(final.values())
    queued = [d for d in decisions if d.get("action") == "queued" and d.get("message_id")]
    pipe = rt.redis.pipeline(transaction=False)
    for d in queued:
        pipe.hgetall(rt.keys.message(d["message_id"]).state)
        pipe.lrange(rt.keys.message(d["message_id"]).attempts, 0, -1)
        pipe.get(rt.keys.message(d["message_id"]).record)
    replies = pipe.execute()
    deliveries: list[dict[str, Any]] = []
    for n, d in enumerate(queued):
        state, attempts, raw = replies[3 * n : 3 * n + 3]
        attempts = [json.loads(a) for a in attempts]
        record = json.loads(raw) if raw else {}
        sent = [a for a in attempts if a.get("outcome")]
        first = min((a["at"] for a in sent if a["outcome"] == "delivered"), default=None)
        held_at = [a["at"] for a in attempts if "held_out" in a]
        deliveries.append(
            {
                "decision": d,
                "cell": record.get("cell", "treated"),
                "state": state.get("state", ""),
                "reason": state.get("reason", ""),
                "outcome": sent[-1]["outcome"] if sent else state.get("state", "queued"),
                "channel": sent[-1].get("channel") if sent else None,
                "delivered_at": first,
                # the gateway called, or a holdout message stopped just before it
                "contacted_at": min([a["at"] for a in sent] + held_at, default=None),
                "coupon": record.get("coupon"),
                "offer": record.get("offer"),
            }
        )
    per_rule: dict[str, dict[str, Any]] = {}
    timeline: dict[str, list[tuple[float, int]]] = defaultdict(list)
    latency_real: list[float] = []
    first_sent = _first_sent(run)
    sim_delay: dict[str, list[float]] = defaultdict(list)
    deferred_delay: dict[str, list[float]] = defaultdict(list)
    channel_outcomes: Counter[tuple[str, str]] = Counter()
    for name, rule in rules.items():
        mine = [d for d in decisions if d["rule"] == name]
        actions = Counter(str(d.get("action")) for d in mine)
        held = Counter(_held_back_by(d) for d in mine if d.get("action") in {"suppress", "defer"})
        dels = [x for x in deliveries if x["decision"]["rule"] == name]
        held.update(
            _send_time_step(x["state"], x["reason"])
            for x in dels
            if x["state"] in {"suppressed", "held_out"}
        )
        treated = [x for x in dels if x["cell"] == "treated"]
        contacted = [x for x in treated if x["contacted_at"] is not None]
        holdouts = [x for x in dels if x["cell"] == "holdout" and x["contacted_at"] is not None]
        delivered = [x for x in treated if x["delivered_at"] is not None]
        per_day: Counter[tuple[str, int]] = Counter()
        for x in delivered:
            day = int((x["delivered_at"] - shift) // 86_400)
            per_day[(x["decision"]["user_id"], day)] += 1
            timeline[name].append((x["delivered_at"] - shift, 1))
            # from the trigger to the first gateway call: how long the rule waited (a retry
            # after a gateway error or timeout is the gateway's delay, not the rule's); a
            # firing deferred by the policy (quiet hours) waited for that too
            delay = x["contacted_at"] - x["decision"]["trigger"]["ts"]
            (deferred_delay if x["decision"]["was_deferred"] else sim_delay)[name].append(delay)
            trigger = (x["decision"]["user_id"], x["decision"]["trigger"]["ts"])
            if rule.delay_s == 0 and trigger in first_sent:
                latency_real.append(run.real_at(x["delivered_at"]) - first_sent[trigger])
        for x in treated:
            channel_outcomes[(str(x["channel"] or "none"), str(x["outcome"]))] += 1

        def hits(cell: list[dict[str, Any]]) -> int:
            return sum(
                _hit(buys.get(x["decision"]["user_id"], []), x["contacted_at"] - shift,
                     x["decision"]["message"]["items"])
                for x in cell
            )  # fmt: skip

        treated_hits, holdout_hits = hits(contacted), hits(holdouts)
        coupons = [x for x in delivered if x["coupon"]]
        # the face value each code was issued at (worker/coupons/ledger.py)
        face = sum(float((x["offer"] or {}).get("face_value", 0.0)) for x in coupons)
        counts = sorted(per_day.values())
        per_rule[name] = {
            "kind": rule.kind, "delay_s": rule.delay_s, "holdout_pct": rule.holdout_pct,
            "decided": len(mine), "actions": dict(actions), "held_back_by": dict(held),
            "queued": len(treated), "contacted": len(contacted), "delivered": len(delivered),
            "held_out": len(holdouts),
            "pushes_per_shopper_day": {
                "shopper_days": len(counts),
                "mean": statistics.fmean(counts) if counts else 0.0,
                "max": counts[-1] if counts else 0,
                "histogram": dict(Counter(counts)),
            },
            "coupons": {"issued": len(coupons), "face_value": round(face, 2),
                        "percent_off": rule.coupon.percent_off if rule.coupon else None},
            "hit_rate": {
                "treated": {"hits": treated_hits, "n": len(contacted),
                            "rate": treated_hits / len(contacted) if contacted else None,
                            "ci": wilson(treated_hits, len(contacted))},
                "holdout": {"hits": holdout_hits, "n": len(holdouts),
                            "rate": holdout_hits / len(holdouts) if holdouts else None,
                            "ci": wilson(holdout_hits, len(holdouts))},
                **lift_interval(treated_hits, len(contacted), holdout_hits, len(holdouts)),
            },
        }  # fmt: skip
    counters = rt.metrics.snapshot()
    examples = _examples(run, decisions, deliveries, buys)
    return {
        "title": run.plan.run_dir.name,
        "history": {"first": run.history_span[0], "last": run.history_span[1]},
        "replayed": {"from": run.replay_span[0], "to": run.replay_span[1],
                     "events_sent": len(run.sent_at),
                     # as fast as possible: the simulated span over the wall time it took
                     "speed": (run.replay_span[1] - run.replay_span[0]) / max(1.0, run.wall_s)
                     if run.steps else run.clock.speed,
                     "as_fast_as_possible": bool(run.steps),
                     "wall_s": round(run.wall_s, 1), "interrupted": run.interrupted},
        "input": {**run.account,
                  "applied": counters.get("events.applied", 0),
                  "duplicates": counters.get("events.duplicate", 0),
                  "rejected_by_workers": {k.removeprefix("pushrec.track_batch.rejected."): v
                                          for k, v in counters.items()
                                          if k.startswith("pushrec.track_batch.rejected.")}},
        "index": run.index,
        "shoppers": {
            "synthetic": len(run.shoppers),
            "channels": dict(Counter(s.channel for s in run.shoppers.values())),
            "without_consent": sum(not s.consent for s in run.shoppers.values()),
            "quiet_hours": sum(s.quiet_hours for s in run.shoppers.values()),
            "gone_tokens": sum(s.gone for s in run.shoppers.values()),
        },
        "rules": per_rule,
        "decisions_by_step": {k.removeprefix("decisions."): v for k, v in counters.items()
                              if k.startswith("decisions.")},
        "channel_outcomes": [{"channel": c, "outcome": o, "count": n}
                             for (c, o), n in sorted(channel_outcomes.items())],
        "timeline": {k: sorted(t for t, _ in v) for k, v in timeline.items()},
        "latency_s": sorted(latency_real),
        "simulated_delay_s": {k: sorted(v) for k, v in sim_delay.items()},
        "simulated_delay_deferred_s": {k: sorted(v) for k, v in deferred_delay.items()},
        "examples": examples,
    }  # fmt: skip


def _examples(
    run: ReplayRun,
    decisions: list[dict[str, Any]],
    deliveries: list[dict[str, Any]],
    buys: dict[str, list[tuple[float, str]]],
) -> list[dict[str, Any]]:
    """A few shoppers' timelines in the history's time: their replayed events, the
    decisions about them and how each message went. Shoppers with most delivered
    messages first."""
    delivered_to = Counter(
        x["decision"]["user_id"] for x in deliveries if x["delivered_at"] is not None
    )
    outcome = {x["decision"]["message_id"]: x["outcome"] for x in deliveries}
    out = []
    for user, _ in delivered_to.most_common(_EXAMPLES):
        events = [
            {"ts": row["ts"], "type": row["type"], "item_id": row.get("item_id")}
            for row in run.replayed.values()
            if row["user_id"] == user
        ]
        mine = [
            {"ts": d.get("at", 0) - run.shift_s, "rule": d["rule"], "action": d.get("action"),
             "reason": d.get("reason", ""),
             "message": (d.get("message") or {}).get("title"),
             "delivery": outcome.get(d.get("message_id", ""))}
            for d in decisions
            if d["user_id"] == user
        ]  # fmt: skip
        out.append(
            {
                "user_id": user,
                "synthetic": run.shoppers[user].as_dict(),
                "events": sorted(events, key=lambda e: e["ts"])[:200],
                "decisions": sorted(mine, key=lambda d: d["ts"])[:30],
                "purchases": len(buys.get(user, [])),
            }
        )
    return out
