"""A shopper as read from Redis: the one reader of a shopper's state.

`ShopperReads` names the parts of a shopper a caller needs. `queue` adds their reads to
the caller's pipeline as one script call, so a batch of shoppers costs one round trip
beside whatever else the caller reads there (the contact policy's `PolicyReads` works
the same way), and `parse` builds a `Shopper` from its reply. Triggers, firing,
delivery and the user view read shoppers through it; the writes stay with their owners
(`state.py` for events, `contacts.py` for devices and preferences).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from indexing.history import HistoryEntry
from worker.rules import ChannelName
from worker.store.client import StatePipeline, StateRedis
from worker.store.keys import Keys
from worker.store.scripts import READ_SHOPPER, Scripts, execute_loading

Part = Literal[
    "profile",  # the profile hash: first/last seen, events, orders, monetary, …
    "recent",  # the capped list of recent events, newest first
    "history",  # the accumulated item history (indexing.history), most recent first
    "cart",  # cart items with the time each was last added
    "cart_quantities",  # cart items with their quantity
    "purchases",  # item -> time of its last purchase (since `ShopperReads.since`)
    "purchase_history",  # purchase counts and first purchase, of `items` or of every item
    "affinity",  # category -> time-decayed interest
    "devices",  # device id -> record
    "preferences",  # consent, timezone, locale, quiet hours (without their timestamps)
]


class RecentEntry(TypedDict, total=False):
    """One entry of the recent-events list (written by `lua/apply_event.lua`)."""

    ts: float
    type: str
    item_id: str
    query: str
    category: str


class DeviceRecord(TypedDict, total=False):
    """One device (written by `contacts.py`); `token` or `subscription` by channel."""

    channel: ChannelName
    registered_at: float
    active: bool
    token: str
    subscription: dict[str, Any]  # endpoint, keys {p256dh, auth}, expirationTime
    deactivated_reason: str


@dataclass(frozen=True)
class Shopper:
    """The parts of one shopper that were read; the others stay empty."""

    user_id: str
    profile: dict[str, str] = field(default_factory=dict)
    recent: list[RecentEntry] = field(default_factory=list)
    history: list[HistoryEntry] = field(default_factory=list)  # most recently touched first
    cart_added: dict[str, float] = field(default_factory=dict)  # item -> time last added
    cart: dict[str, int] = field(default_factory=dict)  # item -> quantity
    purchases: dict[str, float] = field(default_factory=dict)  # item -> last purchase
    purchase_counts: dict[str, int] = field(default_factory=dict)
    first_purchases: dict[str, float] = field(default_factory=dict)
    affinity: list[tuple[str, float]] = field(default_factory=list)  # highest first
    devices: dict[str, DeviceRecord] = field(default_factory=dict)
    preferences: dict[str, str] = field(default_factory=dict)

    def active_devices(self) -> dict[str, DeviceRecord]:
        return {i: d for i, d in self.devices.items() if d.get("active", True)}

    def cart_newest_first(self) -> list[str]:
        return sorted(self.cart_added, key=lambda i: -self.cart_added[i])

    def bought_since(self, ts: float) -> set[str]:
        """Items whose last purchase was at or after `ts`."""
        return {item for item, at in self.purchases.items() if at >= ts}

    def events_after(self, ts: float) -> list[RecentEntry]:
        return [r for r in self.recent if float(r["ts"]) > ts]


@dataclass(frozen=True)
class ShopperReads:
    """Which parts of a shopper to read. `items` narrows `purchase_history` to those
    items (a trigger looks at the item bought, not at every item ever bought); `since`
    narrows `purchases` to those at or after it (delivery asks what was bought since
    the message was made)."""

    parts: frozenset[Part]
    items: tuple[str, ...] | None = None
    since: float | None = None

    @classmethod
    def of(
        cls, *parts: Part, items: Sequence[str] | None = None, since: float | None = None
    ) -> ShopperReads:
        return cls(frozenset(parts), None if items is None else tuple(items), since)

    def queue(self, pipe: StatePipeline, keys: Keys, user_id: str) -> None:
        """Queue this shopper's reads into `pipe`, as one script call
        (`lua/read_shopper.lua`); `parse` reads its reply."""
        k = keys.user(user_id)
        has = self.parts.__contains__
        reads: list[tuple[str, tuple[str | float, ...]]] = []
        if has("profile"):
            reads.append((k.profile, ("hash",)))
        if has("recent"):
            reads.append((k.recent, ("json_list",)))
        if has("history"):
            # one read of two keys: the second brings no op of its own
            reads += [(k.history, ("history",)), (k.history_sums, ())]
        if has("cart"):
            reads.append((k.cart_added, ("zset",)))
        if has("cart_quantities"):
            reads.append((k.cart, ("hash",)))
        if has("purchases"):
            if self.since is None:
                reads.append((k.purchased, ("zset",)))
            else:
                reads.append((k.purchased, ("zset_since", repr(self.since))))
        if has("purchase_history"):
            if self.items is None:
                reads += [(k.purchase_counts, ("hash",)), (k.purchase_first, ("hash",))]
            elif self.items:
                fields: tuple[str | float, ...] = ("fields", len(self.items), *self.items)
                reads += [(k.purchase_counts, fields), (k.purchase_first, fields)]
        if has("affinity"):
            reads.append((k.affinity, ("zset_desc",)))
        if has("devices"):
            reads.append((k.devices, ("hash",)))
        if has("preferences"):
            reads.append((k.preferences, ("hash",)))
        Scripts.queue(
            pipe, READ_SHOPPER, [key for key, _ in reads], [a for _, args in reads for a in args]
        )

    def parse(self, user_id: str, replies: Iterator[Any]) -> Shopper:
        """The shopper from the reply of `queue`, taken from `replies`."""
        has = self.parts.__contains__
        parts = iter(next(replies))
        values: dict[str, Any] = {}
        if has("profile"):
            values["profile"] = _pairs(next(parts))
        if has("recent"):
            values["recent"] = json.loads(next(parts))
        if has("history"):
            values["history"] = decode_history(next(parts))
        if has("cart"):
            values["cart_added"] = _scored(next(parts))
        if has("cart_quantities"):
            values["cart"] = {item: int(qty) for item, qty in _pairs(next(parts)).items()}
        if has("purchases"):
            values["purchases"] = _scored(next(parts))
        if has("purchase_history"):
            counts, firsts = _history(self.items, parts)
            values["purchase_counts"], values["first_purchases"] = counts, firsts
        if has("affinity"):
            values["affinity"] = list(_scored(next(parts)).items())
        if has("devices"):
            values["devices"] = decode_devices(_pairs(next(parts)))
        if has("preferences"):
            values["preferences"] = decode_preferences(_pairs(next(parts)))
        return Shopper(user_id, **values)

    def read(self, client: StateRedis, keys: Keys, user_id: str) -> Shopper:
        """One shopper in its own round trip (commands and tools, not the hot path)."""
        replies = execute_loading(client, lambda pipe: self.queue(pipe, keys, user_id))
        return self.parse(user_id, iter(replies))


def _pairs(flat: list[str]) -> dict[str, str]:
    """A flat [field, value, …] reply as a dict."""
    it = iter(flat)
    return dict(zip(it, it, strict=True))


def _scored(flat: list[str]) -> dict[str, float]:
    """A flat [member, score, …] reply as member -> score, in the reply's order."""
    it = iter(flat)
    return {member: float(score) for member, score in zip(it, it, strict=True)}


def _history(
    items: tuple[str, ...] | None, replies: Iterator[Any]
) -> tuple[dict[str, int], dict[str, float]]:
    if items is None:
        counts, firsts = _pairs(next(replies)), _pairs(next(replies))
        return (
            {i: int(n) for i, n in counts.items()},
            {i: float(t) for i, t in firsts.items()},
        )
    if not items:
        return {}, {}
    counts_l, firsts_l = next(replies), next(replies)
    return (
        {i: int(n) for i, n in zip(items, counts_l, strict=True) if n is not None},
        {i: float(t) for i, t in zip(items, firsts_l, strict=True) if t is not None},
    )


def decode_history(flat: Sequence[str]) -> list[HistoryEntry]:
    """The accumulated history as `read_shopper.lua` returns it: flat [item, latest ts,
    sums, ...], most recently touched first, sums as `Keys.history_sums` holds them."""
    out = []
    it = iter(flat)
    for item_id, last_ts, row in zip(it, it, it, strict=True):
        parts = row.split(" ")
        per_type = {
            parts[i]: [float(parts[i + 1]), float(parts[i + 2])]
            for i in range(0, len(parts) - 2, 3)
        }
        out.append(HistoryEntry(item_id, float(last_ts), per_type))
    return out


def decode_devices(raw: dict[str, str]) -> dict[str, DeviceRecord]:
    """The devices hash as read: device_id -> record."""
    return {did: json.loads(record) for did, record in raw.items()}


def decode_preferences(raw: dict[str, str]) -> dict[str, str]:
    """The preferences hash as read, without its per-field timestamps."""
    return {k: v for k, v in raw.items() if not k.endswith("@ts")}
