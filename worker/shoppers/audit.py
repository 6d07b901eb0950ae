"""The audit trail and attribution: why each shopper was (or was not) contacted, and
what came of it.

Every rule firing leaves a decision record on the shopper (rule, trigger, candidates
with scores and reasons, each policy step's verdict, the message id). Opens, clicks and
purchases are attributed to a message by `push_id` (of the shopper it was sent to only),
or, for a purchase without one, to the last message about that item within the
attribution window that went to the gateway (treated) or was stopped just before it
(holdout): both cells are noted at that same point, by the push worker.
Counts per rule and holdout cell live in one hash per rule, so lift can be read off
(`pushrec stats`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, Literal, NotRequired, TypedDict

from worker.shoppers.inputs import Event
from worker.store.client import StatePipeline, StateRedis
from worker.store.keys import Keys

FireAction = Literal["queued", "suppress", "defer", "error", "duplicate", "dropped"]


class TriggerRecord(TypedDict):
    id: str
    ts: float
    items: list[str]


class MessageSummary(TypedDict):
    title: str
    body: str
    items: list[str]
    cell: str  # treated, or holdout: checked at send time like a treated one, never sent
    coupon: NotRequired[str | None]  # the code issued for it


class Decision(TypedDict, total=False):
    """What firing decided for one job: kept on the shopper (newest first) and returned
    by `Firer.fire_many`. A job whose rule is disabled (`dropped`) or that repeats an
    earlier one (`duplicate`: in its batch, or a message an earlier try queued)
    carries only `action` and `reason` or `message_id`."""

    at: float
    rule: str
    trigger: TriggerRecord
    message_id: str
    candidates: list[dict[str, Any]]  # `recommend.Candidate.as_dict()`, best first
    index_version: str  # the index version that ranked the candidates, when one was served
    policy: dict[str, Any]  # `contact.Verdict.as_dict()`: each step's verdict
    action: FireAction
    reason: str
    step: str  # what settled it: a policy step, or condition, recommend, compose, error
    message: MessageSummary  # when queued
    resumed: bool  # queued by a try that died before recording; this one recorded it
    coupon: dict[str, Any]  # the rule's coupon: `IssuedCoupon.as_dict()`, or {pool, refused}
    delivery: dict[str, Any]  # added by the user view: state, attempts, outcome


# Counters of a rule's hash, in the order `pushrec stats` shows them.
STAT_FIELDS = (
    "fired",
    "suppressed",
    "deferred",
    "held_out",
    "queued",
    "delivered",
    "failed",
    "opened",
    "clicked",
    "converted",
    "held_out_converted",
)


class Audit:
    def __init__(
        self, client: StateRedis, keys: Keys, kept: int, window_s: int, ttl_s: int
    ) -> None:
        self._client = client
        self._keys = keys
        self._kept = kept
        self._window_s = window_s
        self._ttl_s = ttl_s

    def count(self, rule: str, field: str, n: int = 1, pipe: StatePipeline | None = None) -> None:
        (pipe or self._client).hincrby(self._keys.rule_stats(rule), field, n)

    def record_decision(
        self, user_id: str, decision: Decision, pipe: StatePipeline | None = None
    ) -> None:
        """Keep `decision` on the shopper (in `pipe` when given; the caller runs it)."""
        key = self._keys.user(user_id).decisions
        target = pipe if pipe is not None else self._client.pipeline(transaction=False)
        target.lpush(key, json.dumps(decision, separators=(",", ":"), default=str))
        target.ltrim(key, 0, self._kept - 1)
        target.expire(key, self._ttl_s)
        if pipe is None:
            target.execute()

    def decisions(self, user_id: str) -> list[Decision]:
        rows = self._client.lrange(self._keys.user(user_id).decisions, 0, -1)
        return [json.loads(row) for row in rows]

    def remember_items(
        self,
        user_id: str,
        items: Sequence[str],
        message_id: str,
        rule: str,
        cell: str,
        now: float,
        pipe: StatePipeline | None = None,
    ) -> None:
        """Note which message (cell `treated` or `holdout`) last concerned each item."""
        if not items:
            return
        key = self._keys.user(user_id).attribution
        entry = json.dumps({"message_id": message_id, "rule": rule, "cell": cell, "at": now})
        target = pipe if pipe is not None else self._client.pipeline(transaction=False)
        target.hset(key, mapping=dict.fromkeys(items, entry))
        target.expire(key, self._ttl_s)
        if pipe is None:
            target.execute()

    def attribution(self, events: Sequence[Event]) -> Attribution:
        """The reads that attributing `events` needs, to be made in the round trip that
        applies them (`StateStore.apply_events`' `also_read`), then `credit`ed."""
        return Attribution(self._keys, events)

    def credit(self, attribution: Attribution, fresh: Sequence[Event]) -> Counter[str]:
        """Credit opens, clicks and conversions to the messages they came from; each
        outcome counts once per message. Only `fresh` events credit (the reads were made
        for the whole batch, before it was known which events are new).

        A `push_id` names a message only for the shopper it was sent to: an event of
        another shopper carrying it (a device that changed hands, a forwarded link, a
        forged id) credits nothing. Returns such ignored attributions as metric counts
        (`attribution.ignored.<reason>`) for the caller to add."""
        ignored: Counter[str] = Counter()
        new = {id(event) for event in fresh}
        for (event, how), raw in zip(attribution.lookups, attribution.replies, strict=True):
            if not raw or id(event) not in new:
                continue
            if how == "push_id":
                assert event.push_id is not None
                message = json.loads(raw)
                if message["user_id"] != event.user_id:
                    ignored["attribution.ignored.other_shopper"] += 1
                    continue
                outcome = {"push_open": "opened", "push_click": "clicked"}.get(
                    event.type, "converted"
                )
                self._credit(event.push_id, message["rule"], outcome, event.ts)
                continue
            entry = json.loads(raw)
            if 0 <= event.ts - entry["at"] <= self._window_s:
                outcome = "held_out_converted" if entry["cell"] == "holdout" else "converted"
                self._credit(entry["message_id"], entry["rule"], outcome, event.ts)
        return ignored

    def _credit(self, message_id: str, rule: str, outcome: str, ts: float) -> None:
        key = self._keys.message(message_id).outcome
        if self._client.hsetnx(key, outcome, ts):
            self._client.expire(key, self._ttl_s)
            self.count(rule, outcome)

    def outcomes(self, message_id: str) -> dict[str, str]:
        """opened / clicked / converted -> time, as attributed to this message."""
        out: dict[str, str] = self._client.hgetall(self._keys.message(message_id).outcome)  # type: ignore[assignment]
        return out

    def stats(self, rules: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Per rule: the counters, open/click/conversion rates and lift over holdout."""
        out: dict[str, dict[str, Any]] = {}
        for rule in rules:
            raw: dict[str, str] = self._client.hgetall(self._keys.rule_stats(rule))  # type: ignore[assignment]
            counts = {name: int(raw.get(name, 0)) for name in STAT_FIELDS}
            delivered, held = counts["delivered"], counts["held_out"]
            treated_rate = counts["converted"] / delivered if delivered else None
            holdout_rate = counts["held_out_converted"] / held if held else None
            out[rule] = {
                **counts,
                "open_rate": counts["opened"] / delivered if delivered else None,
                "click_rate": counts["clicked"] / delivered if delivered else None,
                "conversion_rate": treated_rate,
                "holdout_conversion_rate": holdout_rate,
                "lift": (treated_rate / holdout_rate - 1)
                if treated_rate is not None and holdout_rate
                else None,
            }
        return out


class Attribution:
    """What attributing a batch of events reads: per event with a `push_id` (an open, a
    click, a purchase) its message's record, per other purchase the shopper's last
    message about the item. `queue` puts the reads in a pipeline, `take` gets their
    replies; `Audit.credit` acts on them."""

    def __init__(self, keys: Keys, events: Sequence[Event]) -> None:
        self._keys = keys
        self.lookups: list[tuple[Event, Literal["push_id", "item"]]] = []
        for event in events:
            if event.push_id is not None and event.type in {"push_open", "push_click", "purchase"}:
                self.lookups.append((event, "push_id"))
            elif event.type == "purchase" and event.item_id:
                self.lookups.append((event, "item"))
        self.replies: list[Any] = []

    def queue(self, pipe: StatePipeline) -> None:
        for event, how in self.lookups:
            if how == "push_id":
                assert event.push_id is not None
                pipe.get(self._keys.message(event.push_id).record)
            else:
                assert event.item_id is not None
                pipe.hget(self._keys.user(event.user_id).attribution, event.item_id)

    def take(self, replies: Iterator[Any]) -> None:
        self.replies = [next(replies) for _ in self.lookups]
