"""Which rules an event or a catalog change triggers, and when each should fire.

A trigger becomes a `pushrec.fire` job, parked in the delayed set until due (a rule
with no delay is due at once). Job ids make triggers idempotent and debounce where a
rule wants it: one pending cart reminder per shopper, due `delay_s` after the last cart
change. Whether the rule still holds is checked when it fires, not here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from worker.catalog import ItemChange
from worker.contract import FIRE
from worker.delayed import Job
from worker.events import Event
from worker.firing import FireJob
from worker.keys import Keys
from worker.rules import EVENT_KINDS, Rule, rules_of_kind


@dataclass(frozen=True)
class Trigger:
    """A rule to evaluate for a shopper, due at `due` (epoch s)."""

    rule: str
    user_id: str
    trigger_id: str
    trigger_ts: float
    items: tuple[str, ...]
    due: float
    debounce: bool = False
    extra: tuple[tuple[str, str], ...] = ()

    def fire_job(self) -> FireJob:
        return FireJob(
            rule=self.rule,
            user_id=self.user_id,
            trigger_id=self.trigger_id,
            trigger_ts=self.trigger_ts,
            items=self.items,
            extra=dict(self.extra),
        )

    def job(self) -> Job:
        """The delayed job firing this trigger: a debounced rule keeps one per shopper."""
        job_id = (
            f"{self.rule}:{self.user_id}"
            if self.debounce
            else f"{self.rule}:{self.user_id}:{self.trigger_id}"
        )
        return Job(job_id=job_id, task=FIRE, kwargs=self.fire_job().kwargs())


class Triggers:
    def __init__(
        self, client: redis.Redis, keys: Keys, rules: tuple[Rule, ...], max_age_s: int
    ) -> None:
        self._client = client
        self._keys = keys
        self._rules = rules
        self._max_age_s = max_age_s

    def for_events(self, events: Sequence[Event], now: float) -> list[Trigger]:
        """Triggers of freshly applied events (older events update state only). The
        shopper state some rules look at is read for the whole batch in one round trip."""
        pairs = [
            (rule, event)
            for event in events
            if event.ts >= now - self._max_age_s and event.item_id is not None
            for kind in EVENT_KINDS.get(event.type, ())
            for rule in rules_of_kind(self._rules, kind)
        ]
        pipe = self._client.pipeline(transaction=False)
        for rule, event in pairs:
            k = self._keys.user(event.user_id)
            if rule.kind == "browse_abandoned":
                pipe.lrange(k.recent, 0, -1)
            elif rule.kind == "replenish":
                assert event.item_id is not None
                pipe.hget(k.purchase_counts, event.item_id)
                pipe.hget(k.purchase_first, event.item_id)
        replies = iter(pipe.execute() if len(pipe) else [])
        out: list[Trigger] = []
        for rule, event in pairs:
            if rule.kind == "browse_abandoned":
                trigger = self._browse(rule, event, [json.loads(r) for r in next(replies)], now)
            elif rule.kind == "replenish":
                trigger = self._replenish(rule, event, next(replies), next(replies), now)
            else:
                trigger = self._for_event(rule, event, now)
            if trigger is not None:
                out.append(trigger)
        return out

    def _for_event(self, rule: Rule, event: Event, now: float) -> Trigger | None:
        assert event.item_id is not None
        if rule.kind in {"cart_abandoned", "post_purchase"}:
            return Trigger(
                rule=rule.name,
                user_id=event.user_id,
                trigger_id=event.event_id,
                trigger_ts=event.ts,
                items=(event.item_id,),
                due=now + rule.delay_s,
                debounce=rule.kind == "cart_abandoned",  # one reminder, moved by each change
            )
        return None

    def _browse(
        self, rule: Rule, event: Event, recent: list[dict[str, Any]], now: float
    ) -> Trigger | None:
        since = event.ts - rule.window_s
        window = [r for r in recent if r["ts"] >= since]
        if any(r["type"] in {"add_to_cart", "purchase"} for r in window):
            return None
        category = next(
            (r.get("category") for r in window if r.get("item_id") == event.item_id), None
        )
        if not category:
            return None
        viewed = [
            r["item_id"] for r in window if r["type"] == "view" and r.get("category") == category
        ]
        if len(viewed) < rule.min_views:
            return None
        return Trigger(
            rule=rule.name,
            user_id=event.user_id,
            trigger_id=event.event_id,
            trigger_ts=event.ts,
            items=tuple(dict.fromkeys(viewed)),
            due=now + rule.delay_s,
            debounce=True,
            extra=(("category", category),),
        )

    def _replenish(
        self, rule: Rule, event: Event, count: str | None, first: str | None, now: float
    ) -> Trigger | None:
        assert event.item_id is not None
        if not count or int(count) < rule.min_purchases or first is None:
            return None
        interval = (event.ts - float(first)) / (int(count) - 1)
        if interval < 86_400:  # several lines of one order, not a habit
            return None
        due = max(now, event.ts + interval - rule.lead_s)
        return Trigger(
            rule=rule.name,
            user_id=event.user_id,
            trigger_id=f"{event.item_id}",  # one pending reminder per item, moved by each purchase
            trigger_ts=event.ts,
            items=(event.item_id,),
            due=due,
            extra=(("interval_days", f"{interval / 86_400:.0f}"),),
        )

    def for_item_changes(self, changes: Sequence[ItemChange], now: float) -> list[Trigger]:
        """Price drops and restocks, fanned out to shoppers who recently showed interest
        (read for every change in one round trip)."""
        pairs = [
            (change, rule)
            for change in changes
            for rule in self._rules
            if rule.enabled and _matches(rule, change)
        ]
        pipe = self._client.pipeline(transaction=False)
        for change, rule in pairs:
            since = now - rule.interest_days * 86_400
            pipe.zrangebyscore(self._keys.interested(change.item_id), since, "+inf")
        out: list[Trigger] = []
        for (change, rule), users in zip(pairs, pipe.execute() if pairs else [], strict=True):
            for user_id in users:
                out.append(
                    Trigger(
                        rule=rule.name,
                        user_id=str(user_id),
                        trigger_id=f"{change.item_id}@{change.ts:.0f}",
                        trigger_ts=change.ts,
                        items=(change.item_id,),
                        due=now + rule.delay_s,
                        extra=(("old", repr(change.old)), ("new", repr(change.new))),
                    )
                )
        return out


def _matches(rule: Rule, change: ItemChange) -> bool:
    if rule.kind == "price_drop":
        return (
            change.field == "price"
            and change.old > 0
            and (change.old - change.new) / change.old * 100 >= rule.min_drop_pct
        )
    if rule.kind == "back_in_stock":
        return change.field == "stock" and change.old <= 0 < change.new
    return False
