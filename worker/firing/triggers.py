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
        pairs = self._pairs(events, now)
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
        shoppers = [
            read.parse(event.user_id, replies) if (read := reads.get(n)) else Shopper(event.user_id)
            for n, (_, event, _) in enumerate(pairs)
        ]
        return _made(pairs, shoppers, now)

    def foreseen(self, events: Sequence[Event], now: float) -> list[Trigger]:
        """The triggers `for_events` will make of `events` if they all prove fresh, as
        far as the rules' kinds read nothing of the shopper to make them (a purchase's
        cross-sell; not a browse reminder, which looks at the shopper): known before the
        events are applied, with no round trip, so that firing them can read what it
        needs in the round trip that applies them. `for_events` decides."""
        pairs = [p for p in self._pairs(events, now) if not KINDS[p[0].kind].trigger_reads]
        return _made(pairs, [Shopper(event.user_id) for _, event, _ in pairs], now)

    def _pairs(self, events: Sequence[Event], now: float) -> list[tuple[Rule, Event, str]]:
        """(rule, event, its item) for each rule whose kind reacts to each recent event."""
        return [
            (rule, event, item)
            for event in events
            if event.ts >= now - self._max_age_s
            for item in (event.item_id,)
            if item is not None
            for rule in self._by_kind
            if event.type in KINDS[rule.kind].events
        ]

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
                if trigger.debounce != debounce:
                    trigger = replace(trigger, debounce=debounce)
                out.append(trigger)
        return out


def _made(
    pairs: Sequence[tuple[Rule, Event, str]], shoppers: Sequence[Shopper], now: float
) -> list[Trigger]:
    """The triggers of `pairs` (with what each one's kind read of its shopper), one per
    (rule, shopper, trigger id): the lines of one order make one trigger of their items."""
    out: dict[tuple[str, str, str], Trigger] = {}
    for (rule, event, _), shopper in zip(pairs, shoppers, strict=True):
        kind = KINDS[rule.kind]
        assert kind.on_event is not None
        trigger = kind.on_event(rule, event, shopper, now)
        if trigger is None:
            continue
        if trigger.debounce != kind.debounce:
            trigger = replace(trigger, debounce=kind.debounce)
        key = (trigger.rule, trigger.user_id, trigger.trigger_id)
        if (first := out.get(key)) is not None:  # another line of the same order
            trigger = replace(first, items=tuple(dict.fromkeys(first.items + trigger.items)))
        out[key] = trigger
    return list(out.values())
