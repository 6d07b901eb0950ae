"""The segment indexes: what segments read, kept up to date as shoppers change.

Per shard of shoppers (`Keys.segment(n)`, hash tag `{seg:<n>}`, `n = shard_of(user)`),
sorted sets of shopper ids scored by last event, last purchase, orders, money spent,
last cart addition (while the cart holds items), each category's share of the shopper's
affinity, and the latest active device per channel (`keys.SegmentKeys`). A segment query
reads these N shards (`worker/segmenting/`), never the shoppers' own keys.

Written in a separate step after the per-shopper Lua script (which stays in one slot):
the state the script left is read (for events, in the script's own round trip, and the
writes go with the batch's side effects, before its events stop being pending:
`StateStore.apply_events`'s `FollowUp`; `refresh_activity` otherwise) and each shopper's
entries are written from it (`segment_put.lua`, one call per shopper), so the step is
idempotent: running it twice, or after a crash and redelivery, writes the same values.
Devices are indexed when they are registered or unregistered and when a gateway declares
one gone (`refresh_devices`, called by delivery after it deactivates the device).

Bounds: one entry per shopper per family. An erased shopper is removed at once
(`forget`, called by erasure); a shopper whose state expired (no write for `user_ttl_s`)
is removed by `sweep_expired`, which the scheduler runs hourly: `seen` holds when the
index last wrote each shopper, the clock their state expires by.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from worker.contract import CHANNELS
from worker.shoppers.snapshot import Shopper, ShopperReads
from worker.store.client import StatePipeline, StateRedis
from worker.store.keys import Keys, SegmentKeys
from worker.store.scripts import SEGMENT_PUT, Scripts, execute_loading

ACTIVITY = ShopperReads(frozenset({"profile", "cart", "cart_quantities", "affinity"}))
"""What the activity entries are computed from."""
_PROFILE_SCORES = ("last_seen", "last_purchase", "orders", "monetary")
_DEVICES = ShopperReads(frozenset({"devices"}))
_SWEEP_CHUNK = 1000


class SegmentIndex:
    def __init__(self, client: StateRedis, keys: Keys) -> None:
        self._client = client
        self._keys = keys

    def refresh_activity(
        self, user_ids: Iterable[str], now: float, pipe: StatePipeline | None = None
    ) -> None:
        """Write the activity entries of `user_ids` from their state now (one round trip
        to read); writes go in `pipe` when given (the caller runs it), else are sent
        here."""
        users = sorted(set(user_ids))
        if not users:
            return

        def queue_reads(reads: StatePipeline) -> None:
            for user_id in users:
                ACTIVITY.queue(reads, self._keys, user_id)

        replies = iter(execute_loading(self._client, queue_reads))
        shoppers = [ACTIVITY.parse(user_id, replies) for user_id in users]
        if pipe is not None:
            self.write_activity(shoppers, now, pipe)
        else:
            execute_loading(self._client, lambda p: self.write_activity(shoppers, now, p))

    def write_activity(self, shoppers: Iterable[Shopper], now: float, pipe: StatePipeline) -> None:
        """Queue in `pipe` the activity entries (last seen, purchases, cart, affinity
        shares) of `shoppers` as read with `ACTIVITY`: one script call each."""
        for s in shoppers:
            if not s.profile:  # expired or erased meanwhile: nothing to index
                continue
            seg = self._keys.segment_of(s.user_id)
            profile = s.profile
            in_cart = [i for i, q in s.cart.items() if q > 0]
            added = max((s.cart_added.get(i, 0.0) for i in in_cart), default=0.0)
            total = sum(w for _, w in s.affinity if w > 0)
            shares = [
                (category, weight / total if total > 0 and weight > 0 else 0.0)
                for category, weight in s.affinity
            ]
            Scripts.queue(
                pipe,
                SEGMENT_PUT,
                [seg.seen, *family_keys(seg)[:5], seg.categories,
                 *(seg.affinity(category) for category, _ in shares)],
                [s.user_id, repr(now),
                 *(profile.get(f, "") for f in _PROFILE_SCORES),
                 repr(added) if in_cart else "",
                 *(a for category, share in shares for a in (category, repr(share)))],
            )  # fmt: skip

    def refresh_devices(self, user_ids: Iterable[str], now: float) -> None:
        """Write the shoppers' channel entries from their active devices now (one round
        trip to read, one to write): after a registration, a removal, or a gateway
        declaring a device gone."""
        users = sorted(set(user_ids))
        if not users:
            return
        reads = self._client.pipeline(transaction=False)
        for user_id in users:
            _DEVICES.queue(reads, self._keys, user_id)
        replies = iter(reads.execute())
        pipe = self._client.pipeline(transaction=False)
        for user_id in users:
            s = _DEVICES.parse(user_id, replies)
            latest: dict[str, float] = {}
            for device in s.active_devices().values():
                channel = device["channel"]
                at = float(device.get("registered_at", 0))
                latest[channel] = max(latest.get(channel, 0.0), at)
            seg = self._keys.segment_of(user_id)
            pipe.zadd(seg.seen, {user_id: now})
            for channel in CHANNELS:
                _put(pipe, seg.channel(channel), user_id, latest.get(channel))
        pipe.execute()

    def forget(self, user_id: str) -> int:
        """Remove the shopper from every index of their shard; returns entries removed."""
        return self._remove(self._keys.segment_of(user_id), [user_id])

    def sweep_expired(self, now: float, ttl_s: float) -> int:
        """Remove the shoppers the index has not written for `ttl_s` (their state has
        expired with its TTL); returns how many."""
        removed = 0
        for shard in range(self._keys.shards):
            seg = self._keys.segment(shard)
            while True:
                old: list[str] = self._client.zrangebyscore(  # type: ignore[assignment]
                    seg.seen, "-inf", f"({now - ttl_s!r}", start=0, num=_SWEEP_CHUNK
                )
                if not old:
                    break
                self._remove(seg, old)
                removed += len(old)
        return removed

    def _remove(self, seg: SegmentKeys, users: Sequence[str]) -> int:
        categories: set[str] = self._client.smembers(seg.categories)  # type: ignore[assignment]
        pipe = self._client.pipeline(transaction=False)
        for key in (
            *family_keys(seg),
            *(seg.affinity(c) for c in sorted(categories)),
        ):
            pipe.zrem(key, *users)
        pipe.zrem(seg.seen, *users)
        return sum(int(n) for n in pipe.execute()[:-1])


def family_keys(seg: SegmentKeys) -> tuple[str, ...]:
    """The fixed indexes of a shard (affinity families come and go with categories);
    the first five in the order `segment_put.lua` writes them."""
    return (seg.last_seen, seg.last_purchase, seg.orders, seg.monetary, seg.cart,
            *(seg.channel(c) for c in CHANNELS))  # fmt: skip


def _put(pipe: StatePipeline, key: str, user_id: str, score: str | float | None) -> None:
    """ZADD the shopper with `score`, or ZREM them when there is none (or it is zero)."""
    value = float(score) if score not in (None, "") else 0.0
    if value:
        pipe.zadd(key, {user_id: value})
    else:
        pipe.zrem(key, user_id)
