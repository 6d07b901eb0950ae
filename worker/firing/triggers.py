"""Which rules an event or a catalog change triggers, and when each should fire.

A trigger becomes a `pushrec.fire` job, parked in the delayed set until due (a rule
with no delay is due at once). Job ids make triggers idempotent and debounce where a
rule wants it: one pending cart reminder per shopper, due `delay_s` after the last cart
change. Whether the rule still holds is checked when it fires, not here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from worker.policy.jobs import Trigger
from worker.policy.kinds import KINDS, change_trigger
from worker.rules import Rule
from worker.shoppers.catalog import ItemChange
from worker.shoppers.inputs import Event
from worker.shoppers.snapshot import Shopper, ShopperReads
from worker.store.client import StateRedis
from worker.store.keys import Keys


class Triggers:
    def __init__(
        self, client: StateRedis, keys: Keys, rules: tuple[Rule, ...], max_age_s: int
    ) -> None:
        self._client = client
        self._keys = keys
        self._rules = tuple(r for r in rules if r.enabled)
        # An event's triggers come kind by kind (KINDS order), rules of a kind in the
        # order they are declared: a purchase fires post_purchase before replenish.
        order = {name: n for n, name in enumerate(KINDS)}
        self._by_kind = sorted(self._rules, key=lambda r: order[r.kind])
        self._max_age_s = max_age_s

    def for_events(self, events: Sequence[Event], now: float) -> list[Trigger]:
        """Triggers of freshly applied events (older events update state only). What the
        rules' kinds read of the shoppers is read for the whole batch in one round trip."""
        pairs = [
            (rule, event, item)
            for event in events
            if event.ts >= now - self._max_age_s
            for item in (event.item_id,)
            if item is not None
            for rule in self._by_kind
            if event.type in KINDS[rule.kind].events
        ]
        # Only kinds that look at the shopper (browse, replenish) read anything.
        reads = {
            n: ShopperReads.of(*parts, items=[item])
            for n, (rule, _, item) in enumerate(pairs)
            if (parts := KINDS[rule.kind].trigger_reads)
        }
        pipe = self._client.pipeline(transaction=False)
        for n, wanted in reads.items():
            wanted.queue(pipe, self._keys, pairs[n][1].user_id)
        replies = iter(pipe.execute() if reads else [])
        out: dict[tuple[str, str, str], Trigger] = {}
        for n, (rule, event, _) in enumerate(pairs):
            kind = KINDS[rule.kind]
            assert kind.on_event is not None
            read = reads.get(n)
            shopper = read.parse(event.user_id, replies) if read else Shopper(event.user_id)
            trigger = kind.on_event(rule, event, shopper, now)
            if trigger is None:
                continue
            trigger = replace(trigger, debounce=kind.debounce)
            key = (trigger.rule, trigger.user_id, trigger.trigger_id)
            if (first := out.get(key)) is not None:  # another line of the same order
                trigger = replace(first, items=tuple(dict.fromkeys(first.items + trigger.items)))
            out[key] = trigger
        return list(out.values())

    def for_item_changes(self, changes: Sequence[ItemChange], now: float) -> list[Trigger]:
        """Price drops and restocks, fanned out to shoppers who recently showed interest
        (read for every change in one round trip)."""
        pairs = [
            (change, rule)
            for change in changes
            for rule in self._rules
            if (match := KINDS[rule.kind].on_change) is not None and match(rule, change)
        ]
        pipe = self._client.pipeline(transaction=False)
        for change, rule in pairs:
            since = now - rule.interest_days * 86_400
            pipe.zrangebyscore(self._keys.interested(change.item_id), since, "+inf")
        out: list[Trigger] = []
        for (change, rule), users in zip(pairs, pipe.execute() if pairs else [], strict=True):
            debounce = KINDS[rule.kind].debounce
            for user_id in users:
                trigger = change_trigger(rule, change, str(user_id), now)
                out.append(replace(trigger, debounce=debounce))
        return out
