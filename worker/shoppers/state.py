"""Live shopper state: applying activity events to Redis.

One event is applied in two steps:

1. `apply_event.lua` updates the shopper's keys atomically (one hash slot) and decides
   once, by `event_id`, whether the event is new. It leaves the id in a "pending" set.
   Among those keys is the shopper's accumulated item history, the model's view of them
   (`indexing.history`; the worker computes each event's decayed term for it).
2. A pipeline appends the event to the interaction log and bumps the trending counters;
   once they and the event's reactions have landed, "pending" is cleared. These keys
   live in other slots, so they cannot join the script.

If a worker dies between the two steps, the redelivered task finds the event pending and
redoes step 2 only; the interaction log may then hold the event twice, which its reader
removes by `event_id`. A batch costs up to three round trips whatever its size on a
single node, four on a cluster: the script (which reads each event's item facts,
category and price, from the catalog; a cluster's caller reads them in a round trip
before it, the item's hash being in another slot), the side effects (with any delayed
jobs its reactions park), and the pending marks after them. When a rule fires at once,
the side effects ride on a round trip of the firing's (`Firer.fire_many`'s `ahead`:
its read, or its create when it read with the script), and where the worker delivers
inline what the firing queued, the marks ride on that delivery's settling
(`StateStore.react_and_confirm`).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.cluster import RedisCluster

from indexing.history import HISTORY_EPOCH, STATE_HALF_LIFE_S, decay_term
from worker.settings import Settings
from worker.shoppers.inputs import Event
from worker.shoppers.snapshot import Shopper, ShopperReads
from worker.store.client import StatePipeline, StateRedis
from worker.store.keys import Keys
from worker.store.metrics import Metrics
from worker.store.scripts import Scripts

# How much each event type says about a shopper's interest (category affinity, trending).
INTEREST_WEIGHTS: dict[str, int] = {
    "view": 1,
    "search": 0,
    "add_to_cart": 3,
    "remove_from_cart": -1,
    "purchase": 5,
    "push_open": 0,
    "push_click": 2,
}
AFFINITY_HALF_LIFE_S = 30 * 86_400
_AFFINITY_EPOCH = 1_577_836_800.0  # 2020-01-01; keeps 2**x finite for a century either side

APPLIED, DUPLICATE, RESUMED = 1, 0, 2


def decayed_weight(weight: float, ts: float) -> float:
    """`weight` scaled so that sums decay with AFFINITY_HALF_LIFE_S.

    Adding `weight * 2**((ts - epoch) / half_life)` to a sum and comparing sums equals
    comparing exponentially decayed sums at any common time, without rewriting old
    scores. Divide by `decayed_weight(1, now)` to read a sum as of `now`.
    """
    return weight * math.pow(2.0, (ts - _AFFINITY_EPOCH) / AFFINITY_HALF_LIFE_S)


class BatchReads(Protocol):
    """Reads made in the round trip that applies a batch (`apply_events`' `also_read`):
    `queue` puts them in its pipeline, `take` gets their replies, in order."""

    def queue(self, pipe: StatePipeline) -> None: ...

    def take(self, replies: Iterator[Any]) -> None: ...


class ShopperSource(BatchReads, Protocol):
    """`BatchReads` that read whole shoppers, which a `FollowUp` may take its own from
    instead of reading them a second time in the same round trip."""

    def covers(self, user_id: str, reads: ShopperReads) -> bool:
        """Whether it reads at least `reads` of this shopper (before `queue`)."""
        ...

    def shopper(self, user_id: str) -> Shopper:
        """The shopper as read (after `take`), for one it `covers`."""
        ...


@dataclass(frozen=True)
class FollowUp:
    """Writes that follow from the state an event batch leaves: `reads` of each shopper
    with a fresh event are read in the batch's own round trip, and `write` queues what
    follows from them with the batch's side effects (so a failure leaves the events
    pending, and their redelivery writes it again). `source`: one of the batch's
    `also_read` whose reads of a shopper it takes where they cover its own (the firing
    of a rule due at once reads the whole shopper in the same round trip)."""

    reads: ShopperReads
    write: Callable[[list[Shopper], StatePipeline], None]
    source: ShopperSource | None = None


@dataclass
class ApplyResult:
    """What `apply_events` did with each event, by position; `side_effects`: their
    writes, queued and not yet sent, when the caller carries them (`react_and_confirm`
    sends them)."""

    statuses: list[int] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    side_effects: StatePipeline | None = None

    @property
    def fresh(self) -> list[Event]:
        """Events whose reactions (rules, attribution) this call must make: the newly
        applied ones and those a crashed delivery applied without confirming."""
        return [e for e, s in zip(self.events, self.statuses, strict=True) if s != DUPLICATE]

    @property
    def applied(self) -> int:
        return sum(1 for s in self.statuses if s == APPLIED)

    @property
    def duplicates(self) -> int:
        return sum(1 for s in self.statuses if s == DUPLICATE)


class PendingMarks:
    """The pending marks of a batch's fresh events, which `apply_event.lua` leaves and
    `react_and_confirm` clears once every reaction has landed. A round trip that comes
    after them all may take the marks: `queue` them in its pipeline, and say `landed()`
    once it has succeeded. A trip that fails may have cleared them all the same (one
    command of a pipeline fails alone): its own work must then be recovered otherwise
    than by the event's redelivery, as an inline delivery's is (`Settler.settle`)."""

    def __init__(self, keys: Keys, events: Sequence[Event]) -> None:
        self._event_ids: dict[str, list[str]] = {}  # a shopper's pending key -> its events
        for event in events:
            key = keys.user(event.user_id).pending_events
            self._event_ids.setdefault(key, []).append(event.event_id)
        self._cleared = False

    @property
    def cleared(self) -> bool:
        """Whether a round trip that took the marks has succeeded."""
        return self._cleared

    def queue(self, pipe: StatePipeline) -> None:
        """Queue the clearing of the marks in `pipe` (idempotent: again after a failure)."""
        for key, event_ids in self._event_ids.items():
            pipe.hdel(key, *event_ids)

    def landed(self) -> None:
        """The pipeline `queue` filled has run without an error."""
        self._cleared = True


class StateStore:
    """Reads and writes shopper state. Holds no per-shopper data itself."""

    def __init__(
        self,
        client: StateRedis,
        keys: Keys,
        settings: Settings,
        scripts: Scripts,
        metrics: Metrics,
    ) -> None:
        self._client = client
        # a cluster's script cannot read an item's hash (another slot): read before it
        self._facts_first = isinstance(client, RedisCluster)
        self._keys = keys
        self._settings = settings
        self._scripts = scripts
        self._metrics = metrics
        # item -> interested shoppers is kept as long as the longest rule looks back:
        # the TTL of each set and the age its entries are trimmed at
        days = max((rule.interest_days for rule in settings.rules), default=14)
        self._interest_ttl_s = days * 86_400

    def apply_events(
        self,
        events: Sequence[Event],
        now: float,
        delivery_id: str,
        follow_up: FollowUp | None = None,
        also_read: Sequence[BatchReads] = (),
        carry_side_effects: bool = False,
    ) -> ApplyResult:
        """Apply valid `events` (in order); duplicates of earlier event_ids change nothing.

        `delivery_id` identifies the message carrying the events (the Celery task id):
        a retry or redelivery of that message finishes what a crash interrupted.
        `follow_up`: writes that follow from the state the batch leaves (`FollowUp`).
        `also_read`: reads of the caller's that ride on the batch's round trip, after
        the scripts (they see the state the batch leaves), in order.
        `carry_side_effects`: leave the events' side effects (log, interest sets,
        trending, counters, follow-up writes) queued in the result, for
        `react_and_confirm` to send with the reactions' first round trip.
        """
        if not events:
            return ApplyResult()
        catalog = (
            self._catalog_facts({e.item_id for e in events if e.item_id})
            if self._facts_first
            else None
        )
        # A repeat inside the batch would find its first copy "pending" and redo its
        # side effects; it is a plain duplicate, decided here.
        first: dict[str, int] = {}
        pipe = self._client.pipeline(transaction=False)
        for position, event in enumerate(events):
            if first.setdefault(event.event_id, position) == position:
                facts = catalog.get(event.item_id or "", ("", "")) if catalog is not None else None
                self._queue_state_update(pipe, event, facts, now, delivery_id)
        users = sorted({e.user_id for e in events})
        source = follow_up.source if follow_up is not None else None
        if source is not None and not any(source is theirs for theirs in also_read):
            raise ValueError("a FollowUp's source must be one of the batch's also_read")
        own: list[str] = []  # the follow-up's shoppers that it reads itself
        if follow_up is not None:
            own = [u for u in users if source is None or not source.covers(u, follow_up.reads)]
            for user_id in own:
                follow_up.reads.queue(pipe, self._keys, user_id)
        for theirs in also_read:
            theirs.queue(pipe)
        replies = pipe.execute()
        # each script's [status, the category it applied the event with]
        applied = iter([(int(status), str(category)) for status, category in replies[: len(first)]])
        outcomes = [
            next(applied) if first[e.event_id] == position else (DUPLICATE, "")
            for position, e in enumerate(events)
        ]
        statuses = [status for status, _ in outcomes]

        side_effects = self._client.pipeline(transaction=False)
        self._queue_side_effects(
            side_effects,
            [
                (event, category)
                for event, (status, category) in zip(events, outcomes, strict=True)
                if status != DUPLICATE
            ],
            now,
        )
        counts = Counter(
            {APPLIED: "events.applied", DUPLICATE: "events.duplicate", RESUMED: "events.resumed"}[s]
            for s in statuses
        )
        self._metrics.add(counts, pipe=side_effects)
        reads = iter(replies[len(first) :])
        read_here = {u: follow_up.reads.parse(u, reads) for u in own} if follow_up else {}
        for theirs in also_read:
            theirs.take(reads)
        if follow_up is not None:
            taken = {u: source.shopper(u) for u in users if u not in read_here} if source else {}
            after = [read_here[u] if u in read_here else taken[u] for u in users]
            fresh = {e.user_id for e, s in zip(events, statuses, strict=True) if s != DUPLICATE}
            follow_up.write([s for s in after if s.user_id in fresh], side_effects)
        if carry_side_effects:
            return ApplyResult(statuses, list(events), side_effects)
        side_effects.execute()
        return ApplyResult(statuses, list(events))

    def _catalog_facts(self, item_ids: set[str]) -> dict[str, tuple[str, str]]:
        """item_id -> (category, price) from the catalog; '' where unknown (a cluster's
        round trip before the script)."""
        ordered = sorted(item_ids)
        pipe = self._client.pipeline(transaction=False)
        for item_id in ordered:
            pipe.hmget(self._keys.item(item_id).item, ["category", "price"])
        rows = pipe.execute() if ordered else []
        return {
            item_id: (row[0] or "", row[1] or "")
            for item_id, row in zip(ordered, rows, strict=True)
        }

    def _queue_state_update(
        self,
        pipe: StatePipeline,
        event: Event,
        catalog: tuple[str, str] | None,
        now: float,
        delivery_id: str,
    ) -> None:
        """Queue the state script for `event`, with its item's (category, price) read
        already (a cluster) or None: the script reads them from the item's hash."""
        s = self._settings
        keys = self._keys.user(event.user_id).event_state()
        if catalog is None and event.item_id:
            keys.append(self._keys.item(event.item_id).item)
        category, catalog_price = catalog or ("", "")
        price = event.price if event.price is not None else catalog_price
        # the script adds the category, last, when the item has one
        recent: dict[str, object] = {"ts": event.ts, "type": event.type}
        if event.item_id:
            recent["item_id"] = event.item_id
        if event.query:
            recent["query"] = event.query
        if event.push_id:
            recent["push_id"] = event.push_id
        self._scripts.queue(
            pipe,
            self._scripts.apply_event,
            keys,
            [
                event.event_id,
                event.type,
                event.item_id or "",
                repr(event.ts),
                event.quantity,
                "" if price == "" else repr(float(price)),
                category,
                repr(decayed_weight(INTEREST_WEIGHTS[event.type], event.ts)),
                repr(now),
                s.recent_items_max,
                s.dedup_window_s,
                s.dedup_max_per_user,
                s.user_ttl_s,
                json.dumps(recent, separators=(",", ":")),
                delivery_id,
                self._interest_ttl_s,
                s.cart_max_items,
                repr(decay_term(event.ts)) if event.item_id else "0",
                s.history_items_max,
                repr(HISTORY_EPOCH),
                repr(STATE_HALF_LIFE_S),
            ],
        )

    def _queue_side_effects(
        self, pipe: StatePipeline, applied: list[tuple[Event, str]], now: float
    ) -> None:
        """Log each event (in order), note views and carts in the item interest sets
        (trimmed to the interest window), add its weight to the trending buckets it
        falls in. Counters are summed per batch to keep the command count, which
        dominates the cost, low. The pending marks are cleared later, by
        `react_and_confirm`."""
        s = self._settings
        trending: Counter[tuple[str, str]] = Counter()
        expiry: dict[str, int] = {}
        interested: dict[str, dict[str, float]] = {}  # item -> user -> last ts
        for event, category in applied:
            entry: dict[Any, Any] = {  # redis-py's stream field types are over-narrow
                "event_id": event.event_id,
                "user_id": event.user_id,
                "item_id": event.item_id or "",
                "type": event.type,
                "ts": repr(event.ts),
                "quantity": str(event.quantity),
                "price": "" if event.price is None else repr(event.price),
            }
            pipe.xadd(
                self._keys.interaction_log(self._keys.shard(event.user_id)),
                entry,
                maxlen=max(1, s.interaction_log_maxlen // self._keys.shards),
                approximate=True,
            )
            if event.item_id and event.type in {"view", "add_to_cart"}:
                users = interested.setdefault(event.item_id, {})
                users[event.user_id] = max(event.ts, users.get(event.user_id, event.ts))
            weight = INTEREST_WEIGHTS[event.type]
            bucket = int(event.ts // s.trending_bucket_s)
            expires_at = (bucket + 1 + s.trending_buckets_kept) * s.trending_bucket_s
            if not event.item_id or weight <= 0 or expires_at <= now:
                continue
            for key, member in (
                (self._keys.trending_items(bucket, self._keys.shard(event.item_id)), event.item_id),
                (self._keys.trending_categories(bucket, self._keys.shard(category)), category),
            ):
                if member:
                    trending[key, member] += weight
                    expiry[key] = int(expires_at)
        for item_id, users in interested.items():
            key = self._keys.interested(item_id)
            pipe.zadd(key, users, gt=True)
            pipe.zremrangebyscore(key, "-inf", f"({now - self._interest_ttl_s!r}")
            pipe.expire(key, self._interest_ttl_s)
        for (key, member), weight in trending.items():
            pipe.zincrby(key, weight, member)
        for key, expires_at in expiry.items():
            pipe.expireat(key, expires_at)

    def react_and_confirm(
        self, result: ApplyResult, react: Callable[[StatePipeline, PendingMarks], bool]
    ) -> None:
        """Queue the reactions to `result`'s fresh events (`react` fills the pipeline,
        which starts with the side effects the result carries, may send it with a round
        trip of its own, and says whether it still holds work that must not be lost),
        then clear the events' pending marks. Until the marks are cleared, a redelivery
        of the task redoes the reactions, so a crash in between loses none of them.

        The marks go last, in a round trip after every reaction's has succeeded: in one
        pipeline a command the server refuses (out of memory) or a node that fails (a
        cluster's delayed set and shopper live on different nodes) fails alone, and the
        marks would be cleared with the work lost. A round trip the reactions make
        anyway after theirs may take the marks (`react` gets them: an inline delivery's
        settling, whose own writes a failure hands to the push queue, not to the event's
        redelivery); else they go in one of their own, with any counters `react` left.
        A count a partial failure loses is not a message."""
        pipe = result.side_effects or self._client.pipeline(transaction=False)
        marks = PendingMarks(self._keys, result.fresh)
        if react(pipe, marks):
            pipe.execute()
            pipe = self._client.pipeline(transaction=False)
        if not marks.cleared:
            marks.queue(pipe)
        pipe.execute()  # an empty pipeline makes no round trip

    def trending_items(self, now: float, hours: int, count: int) -> list[tuple[str, float]]:
        """The `count` items with most weighted activity over the last `hours` buckets
        (each bucket's top `4 * count` of each shard: an item lives in one shard)."""
        s = self._settings
        last = int(now // s.trending_bucket_s)
        n = max(1, min(s.trending_buckets_kept, hours * 3600 // s.trending_bucket_s))
        totals: Counter[str] = Counter()  # float scores: Counter's int typing is nominal
        pipe = self._client.pipeline(transaction=False)
        for bucket in range(last - n + 1, last + 1):
            for shard in self._keys.all_shards:
                key = self._keys.trending_items(bucket, shard)
                pipe.zrevrange(key, 0, 4 * count, withscores=True)
        for rows in pipe.execute():
            for member, score in rows:
                totals[member] += score
        return [(item, float(score)) for item, score in totals.most_common(count)]
