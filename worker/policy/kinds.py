"""Rule kinds: what each kind of rule is, one entry per kind in `KINDS`.

A kind says what triggers it (activity events, a catalog change fanned out to the
shoppers interested in the item, or a coupon issued to the shopper), how the trigger is
built, whether a pending trigger is debounced (one per shopper, moved by each new
trigger), what the message is about, and what must still hold when the rule fires and
when its message is sent (catalog kinds share `change_trigger`, one trigger per
interested shopper). Triggers, firing and delivery read the entry; none of them tests a
kind by its name. Adding a kind is one entry here, its name in `rules.RuleKind`, and its
row in docs/realtime.md.

What a message is about (`Kind.about`):

- ``"item"``: an item the shopper asked for (price drop, restock, replenish). The item
  leads the message, the no-repeat step leaves it alone, and buying it cancels the rule.
- ``"cart"``: the shopper's cart. Its items lead the message, newest first; buying the
  first of them cancels the message at send time.
- ``"shopper"``: the shopper's taste. The trigger items only seed neighbours.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from worker.policy.jobs import Trigger
from worker.rules import Rule, RuleKind
from worker.shoppers.catalog import ItemChange
from worker.shoppers.inputs import Event
from worker.shoppers.snapshot import Part, Shopper

Holds = tuple[list[str], str]
"""(the rule's own items now, '') or ([], why the rule no longer applies)."""

EventTrigger = Callable[[Rule, Event, Shopper, float], Trigger | None]
"""(rule, fresh event, the shopper's `trigger_reads`, now) -> the trigger, if any."""
ChangeMatch = Callable[[Rule, ItemChange], bool]
FireCheck = Callable[[Rule, float, tuple[str, ...], Shopper], Holds]
"""(rule, trigger time, trigger items, the shopper's `FIRE_READS`) -> `Holds`."""


@dataclass(frozen=True)
class Kind:
    name: RuleKind
    about: Literal["item", "cart", "shopper"]
    holds_at_fire: FireCheck
    events: tuple[str, ...] = ()  # activity types that trigger it
    on_event: EventTrigger | None = None
    trigger_reads: frozenset[Part] = frozenset()  # what `on_event` reads of the shopper
    on_change: ChangeMatch | None = None  # catalog kinds: the change that triggers it
    on_issue: bool = False  # triggered by a code issued to the shopper (coupons/reminders.py)
    debounce: bool = False

    @property
    def leads_with_own_items(self) -> bool:
        """The trigger's items lead the message and skip the no-repeat step."""
        return self.about != "shopper"

    @property
    def offers_cart(self) -> bool:
        """Items in the cart may be offered (elsewhere they are already the shopper's)."""
        return self.about == "cart"

    def holds_at_send(self, items: Sequence[str], bought_since: set[str]) -> str:
        """Why a message of this kind about `items` must not go out now that
        `bought_since` were bought after it was made ('' if it may)."""
        left = [i for i in items if i not in bought_since]
        if not left or (self.leads_with_own_items and items and items[0] in bought_since):
            return "bought in the meantime"
        return ""


FIRE_READS: frozenset[Part] = frozenset({"recent", "history", "purchases", "cart"})
"""What `Kind.holds_at_fire` and recommendation read of the shopper when a rule fires."""


def _trigger(
    rule: Rule,
    event: Event,
    now: float,
    items: tuple[str, ...],
    extra: tuple[tuple[str, str], ...] = (),
    trigger_id: str = "",
) -> Trigger:
    """A trigger of `event` about `items`, due `rule.delay_s` from now; its id the
    event's unless given."""
    return Trigger(
        rule=rule.name,
        user_id=event.user_id,
        trigger_id=trigger_id or event.event_id,
        trigger_ts=event.ts,
        items=items,
        due=now + rule.delay_s,
        extra=extra,
    )


def _its_item(rule: Rule, event: Event, _: Shopper, now: float) -> Trigger:
    """A trigger about the event's own item (cart_abandoned)."""
    assert event.item_id is not None
    return _trigger(rule, event, now, (event.item_id,))


def order_of(event: Event) -> str:
    """The order a purchase line belongs to: `props.order_id` when the shop sends one,
    else the shopper's purchases of the same second (one checkout's lines)."""
    order = event.props.get("order_id")
    return f"order:{order}" if order not in (None, "") else f"order@{event.ts:.0f}"


def _its_order(rule: Rule, event: Event, _: Shopper, now: float) -> Trigger:
    """A trigger about the order the purchased line belongs to (post_purchase): the
    lines of one order share its id, so they make one message, not one per line
    (`Triggers.for_events` merges a batch's lines into one trigger)."""
    assert event.item_id is not None
    return _trigger(rule, event, now, (event.item_id,), trigger_id=order_of(event))


# --- cart_abandoned -----------------------------------------------------------------
def _cart_holds(rule: Rule, trigger_ts: float, items: tuple[str, ...], s: Shopper) -> Holds:
    """What is left in the cart: a purchase takes its item out (apply_event.lua), and an
    item bought after it was added counts as taken out too (events of one shopper may be
    applied out of order), so buying part of the cart leaves a reminder about the rest
    and buying something else changes nothing. Taking an item out of the cart says the
    shopper has decided."""
    if any(r["type"] == "remove_from_cart" for r in s.events_after(trigger_ts)):
        return [], "cart removal since the trigger"
    cart = [i for i in s.cart_newest_first() if s.purchases.get(i, -math.inf) < s.cart_added[i]]
    if cart:
        return cart, ""
    bought = any(r["type"] == "purchase" for r in s.events_after(trigger_ts))
    return [], "cart bought since the trigger" if bought else "cart is empty"


# --- browse_abandoned ---------------------------------------------------------------
def _browse_trigger(rule: Rule, event: Event, s: Shopper, now: float) -> Trigger | None:
    """Enough views in one category within the window, and nothing carted or bought."""
    window = [r for r in s.recent if r["ts"] >= event.ts - rule.window_s]
    if any(r["type"] in {"add_to_cart", "purchase"} for r in window):
        return None
    category = next((r.get("category") for r in window if r.get("item_id") == event.item_id), None)
    if not category:
        return None
    viewed = [r["item_id"] for r in window if r["type"] == "view" and r.get("category") == category]
    if len(viewed) < rule.min_views:
        return None
    return _trigger(rule, event, now, tuple(dict.fromkeys(viewed)), (("category", category),))


def _browse_holds(rule: Rule, trigger_ts: float, items: tuple[str, ...], s: Shopper) -> Holds:
    if any(r["type"] in {"add_to_cart", "purchase"} for r in s.events_after(trigger_ts)):
        return [], "added to cart or bought since"
    return list(items), ""


# --- post_purchase ------------------------------------------------------------------
def _always_holds(rule: Rule, trigger_ts: float, items: tuple[str, ...], s: Shopper) -> Holds:
    return list(items), ""


# --- replenish ----------------------------------------------------------------------
def _replenish_trigger(rule: Rule, event: Event, s: Shopper, now: float) -> Trigger | None:
    """A repeat purchase: remind one lead before the next one is expected."""
    assert event.item_id is not None
    count = s.purchase_counts.get(event.item_id, 0)
    first = s.first_purchases.get(event.item_id)
    if count < rule.min_purchases or first is None:
        return None
    interval = (event.ts - first) / (count - 1)
    if interval < 86_400:  # several lines of one order, not a habit
        return None
    return Trigger(
        rule=rule.name,
        user_id=event.user_id,
        trigger_id=event.item_id,  # one pending reminder per item, moved by each purchase
        trigger_ts=event.ts,
        items=(event.item_id,),
        due=max(now, event.ts + interval - rule.lead_s),
        extra=(("interval_days", f"{interval / 86_400:.0f}"),),
    )


# --- price_drop, back_in_stock --------------------------------------------------------
def _price_dropped(rule: Rule, change: ItemChange) -> bool:
    return (
        change.field == "price"
        and change.old > 0
        and (change.old - change.new) / change.old * 100 >= rule.min_drop_pct
    )


def _restocked(rule: Rule, change: ItemChange) -> bool:
    return change.field == "stock" and change.old <= 0 < change.new


def change_trigger(rule: Rule, change: ItemChange, user_id: str, now: float) -> Trigger:
    """The trigger of a catalog change that `on_change` matched, for one shopper who
    showed interest in the item: one per change (its time makes the id)."""
    return Trigger(
        rule=rule.name,
        user_id=user_id,
        trigger_id=f"{change.item_id}@{change.ts:.0f}",
        trigger_ts=change.ts,
        items=(change.item_id,),
        due=now + rule.delay_s,
        extra=(("old", repr(change.old)), ("new", repr(change.new))),
    )


def _item_not_bought(rule: Rule, trigger_ts: float, items: tuple[str, ...], s: Shopper) -> Holds:
    item = items[0]
    bought_at = s.purchases.get(item)
    if bought_at is not None and bought_at > trigger_ts:
        return [], "bought since"
    return [item], ""


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(
            "cart_abandoned",
            about="cart",
            events=("add_to_cart",),
            on_event=_its_item,
            debounce=True,
            holds_at_fire=_cart_holds,
        ),
        Kind(
            "browse_abandoned",
            about="shopper",
            events=("view",),
            on_event=_browse_trigger,
            trigger_reads=frozenset({"recent"}),
            debounce=True,
            holds_at_fire=_browse_holds,
        ),
        Kind(
            "post_purchase",
            about="shopper",
            events=("purchase",),
            on_event=_its_order,
            holds_at_fire=_always_holds,
        ),
        Kind(
            "replenish",
            about="item",
            events=("purchase",),
            on_event=_replenish_trigger,
            trigger_reads=frozenset({"purchase_history"}),
            holds_at_fire=_item_not_bought,
        ),
        # a campaign's shoppers come from its segment, not from events (worker/campaigning/)
        Kind("campaign", about="shopper", holds_at_fire=_always_holds),
        Kind("coupon_expiring", about="shopper", on_issue=True, holds_at_fire=_always_holds),
        Kind("price_drop", about="item", on_change=_price_dropped, holds_at_fire=_item_not_bought),
        Kind("back_in_stock", about="item", on_change=_restocked, holds_at_fire=_item_not_bought),
    )
}
