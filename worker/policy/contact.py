"""The contact policy: whether, when and on which channels a shopper may be contacted.

Steps run in a fixed order and each one is recorded (the audit trail):
consent -> caps (rule cooldown, marketing per day and week, total per day) -> quiet
hours (marketing waits for their end, never dropped, never early) -> no repeats (items
pushed to this shopper within `no_repeat_days` are removed) -> holdout (a fixed share of
shoppers never gets the rule, so its lift can be measured). A held-out firing still
makes its message (cell `holdout`): the push worker takes it through the same send-time
checks and cap reservation as a treated one and stops it only where a treated message
would go to the gateway, so both cells count the shoppers who would have been contacted,
once per message.

`decide` is pure: its Redis reads (the caps, checked dry, and the items pushed lately)
are queued by `queue_reads` into the caller's pipeline, so firing a batch reads every
shopper in one round trip. At send time the push worker asks again what may have changed
since: `consented_channels`, `quiet_until` (against the preferences as they are then),
and `queue_reserve`, the atomic check-and-record of the caps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from worker.policy.quiet_hours import next_allowed
from worker.rules import Rule
from worker.settings import Settings
from worker.store.client import StatePipeline
from worker.store.keys import Keys
from worker.store.scripts import Scripts

Action = Literal["send", "defer", "suppress"]
Cell = Literal["treated", "holdout"]


@dataclass(frozen=True)
class Step:
    name: str
    verdict: Literal["pass", "fail", "defer", "held_out"]
    detail: str = ""


@dataclass
class Verdict:
    action: Action
    channels: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    defer_until: float | None = None
    steps: list[Step] = field(default_factory=list)
    cell: Cell = "treated"  # holdout: made and checked at send time, never sent

    @property
    def reason(self) -> str:
        last = self.steps[-1] if self.steps else None
        return f"{last.name}: {last.detail}" if last else ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "channels": self.channels,
            "defer_until": self.defer_until,
            "cell": self.cell,
            "steps": [
                {"step": s.name, "verdict": s.verdict, "detail": s.detail} for s in self.steps
            ],
        }


@dataclass(frozen=True)
class PolicyReads:
    """What `decide` needs from Redis for one (rule, shopper, message)."""

    limit: str  # the caps checked dry: 'ok', 'already' or the limit hit
    pushed: frozenset[str]  # items pushed to the shopper within `no_repeat_days`

    @classmethod
    def from_replies(cls, replies: Iterator[Any]) -> PolicyReads:
        """Take the replies of `queue_reads` off a pipeline's replies."""
        limit, pushed = next(replies), next(replies)
        return cls(limit=str(limit), pushed=frozenset(pushed))


def holdout_bucket(rule_name: str, user_id: str) -> float:
    """A stable number in [0, 100) per (rule, shopper): the holdout cell is fixed."""
    digest = hashlib.sha256(f"{rule_name}\n{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 / 100


class ContactPolicy:
    def __init__(self, keys: Keys, scripts: Scripts, settings: Settings) -> None:
        self._keys = keys
        self._scripts = scripts
        self._settings = settings

    def consented_channels(
        self, rule: Rule, device_channels: Sequence[str], prefs: dict[str, str]
    ) -> list[str]:
        """The rule's channels, in its order, that the shopper has a device for and
        consented to for the rule's purpose (a channel's own answer beats `*`)."""
        default = (
            self._settings.consent_default_marketing
            if rule.purpose == "marketing"
            else self._settings.consent_default_transactional
        )
        everywhere = prefs.get(f"consent:{rule.purpose}:*")
        allowed: list[str] = []
        for channel in rule.channels:
            if channel not in device_channels:
                continue
            answer = prefs.get(f"consent:{rule.purpose}:{channel}", everywhere)
            if (answer == "1") if answer is not None else default:
                allowed.append(channel)
        return allowed

    @staticmethod
    def quiet_until(rule: Rule, prefs: dict[str, str], now: float) -> float | None:
        """When the shopper's quiet hours end if `now` falls inside them and they hold
        the rule's messages (marketing only; transactional ones go at any hour), else
        None. Firing and sending both ask."""
        window = prefs.get("quiet_hours")
        if rule.purpose != "marketing" or not window:
            return None
        return next_allowed(now, prefs.get("timezone", "UTC"), window)

    def _limits(
        self, rule: Rule, user_id: str, message_id: str, now: float, *, dry: bool
    ) -> tuple[list[str], list[str | int | float]]:
        """The keys and args of the `contact_reserve` script."""
        s = self._settings
        k = self._keys.user(user_id)
        return [k.contacts, k.rule_last_sent], [
            now, rule.purpose, rule.name, message_id, s.cap_marketing_per_day,
            s.cap_marketing_per_week, s.cap_total_per_day, rule.cooldown_s, s.user_ttl_s,
            "1" if dry else "0",
        ]  # fmt: skip

    def queue_reads(
        self, pipe: StatePipeline, rule: Rule, user_id: str, message_id: str, now: float
    ) -> None:
        """Queue in `pipe` the reads `decide` needs (`PolicyReads.from_replies`)."""
        keys, args = self._limits(rule, user_id, message_id, now, dry=True)
        self._scripts.queue(pipe, self._scripts.contact_reserve, keys, args)
        self.queue_pushed(pipe, user_id, now - self._settings.no_repeat_days * 86_400)

    def queue_pushed(self, pipe: StatePipeline, user_id: str, since: float) -> None:
        """Queue in `pipe` a read of the items pushed to the shopper at or after `since`
        (the no-repeat step; the reply is a list of item ids)."""
        pipe.zrangebyscore(self._keys.user(user_id).pushed_items, since, "+inf")

    def decide(
        self,
        rule: Rule,
        user_id: str,
        items: Sequence[str],
        device_channels: Sequence[str],
        prefs: dict[str, str],
        now: float,
        reads: PolicyReads,
        *,
        item_rule: bool = False,
    ) -> Verdict:
        """Run every step; `items` are the candidates in order, `reads` what
        `queue_reads` read for this shopper and message. `item_rule` marks rules
        about specific items the shopper asked for (cart, price drop, restock), which
        the no-repeat step leaves alone."""
        verdict = Verdict(action="send")
        steps = verdict.steps

        channels = self.consented_channels(rule, device_channels, prefs)
        if not channels:
            detail = "no device" if not device_channels else f"no consent for {rule.purpose}"
            steps.append(Step("consent", "fail", detail))
            verdict.action = "suppress"
            return verdict
        steps.append(Step("consent", "pass", ",".join(channels)))
        verdict.channels = channels

        limit = reads.limit
        if limit not in {"ok", "already"}:
            steps.append(Step("caps", "fail", limit))
            verdict.action = "suppress"
            return verdict
        steps.append(Step("caps", "pass"))

        until = self.quiet_until(rule, prefs, now)
        if until is not None:
            steps.append(Step("quiet_hours", "defer", f"until {until:.0f}"))
            verdict.action = "defer"
            verdict.defer_until = until
            return verdict
        steps.append(Step("quiet_hours", "pass"))

        fresh = list(items)
        if not item_rule:
            fresh = [item for item in items if item not in reads.pushed]
        if not fresh:
            steps.append(Step("no_repeat", "fail", "every candidate was pushed recently"))
            verdict.action = "suppress"
            return verdict
        steps.append(Step("no_repeat", "pass", f"{len(items) - len(fresh)} removed"))
        verdict.items = fresh

        bucket = holdout_bucket(rule.name, user_id)
        if bucket < rule.holdout_pct:
            steps.append(Step("holdout", "held_out", f"cell {bucket:.2f} < {rule.holdout_pct}%"))
            verdict.cell = "holdout"
            return verdict
        steps.append(Step("holdout", "pass"))
        return verdict

    def queue_reserve(
        self, pipe: StatePipeline, rule: Rule, user_id: str, message_id: str, now: float
    ) -> None:
        """At send time: check the caps again and record the contact atomically (queued
        in `pipe`). The reply is 'ok', 'already' (recorded by an earlier attempt) or the
        limit hit."""
        keys, args = self._limits(rule, user_id, message_id, now, dry=False)
        self._scripts.queue(pipe, self._scripts.contact_reserve, keys, args)

    def record_items(
        self, user_id: str, items: Sequence[str], now: float, pipe: StatePipeline
    ) -> None:
        """Note the items just pushed to the shopper (in `pipe`), for the no-repeat step."""
        key = self._keys.user(user_id).pushed_items
        pipe.zadd(key, {item: now for item in items})
        pipe.zremrangebyscore(key, "-inf", now - max(1, self._settings.no_repeat_days) * 86_400)
        pipe.expire(key, self._settings.user_ttl_s)
