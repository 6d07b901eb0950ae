"""What firing reads of each shopper, for a whole batch in one round trip.

For each firing: its message's delivery state (an earlier try may have queued it), the
shopper (state, devices, preferences: `_READS`) and the contact policy's counters; once
for the batch, the catalog's change feed, so the catalog reads after it need no round
trip when the entries are cached. `FiringReader.read` makes that round trip (after the
caller's writes, if any); `FiringReads` queues the same reads in a round trip the caller
makes anyway (the state script's that applies the events which trigger the jobs), for
`Firer.fire_many` to use when it fires those very jobs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.delivery.outbox import Outbox
from worker.firing.in_flight import Firing
from worker.firing.recommend import ShopperView
from worker.policy.contact import ContactPolicy, PolicyReads
from worker.policy.jobs import FireJob
from worker.policy.kinds import FIRE_READS
from worker.shoppers.audit import Decision
from worker.shoppers.catalog import Catalog
from worker.shoppers.snapshot import Part, Shopper, ShopperReads
from worker.store.client import StatePipeline, StateRedis
from worker.store.keys import Keys

_READS = ShopperReads(FIRE_READS | {"profile", "devices", "preferences"})


@dataclass(frozen=True)
class ShopperRead:
    """What was read for one firing."""

    state: Shopper
    view: ShopperView
    policy: PolicyReads
    known: bool  # has a profile or a device: not erased, not expired
    message_state: str  # of the firing's message before this try; "" when there is none


class FiringReader:
    """Queues and parses firing's reads; makes their round trip when the caller has none."""

    def __init__(
        self,
        client: StateRedis,
        keys: Keys,
        catalog: Catalog,
        outbox: Outbox,
        policy: ContactPolicy,
    ) -> None:
        self._client = client
        self._keys = keys
        self._catalog = catalog
        self._outbox = outbox
        self._policy = policy

    def read(
        self, firings: Sequence[Firing], now: float, ahead: StatePipeline | None = None
    ) -> list[ShopperRead]:
        """Each firing's reads, in one round trip. `ahead`: the caller's writes, sent
        first in that round trip (alone when there is nothing to read)."""
        pipe = ahead if ahead is not None else self._client.pipeline(transaction=False)
        theirs = len(pipe)
        if not firings:
            pipe.execute()  # an empty pipeline makes no round trip
            return []
        feed_since = self.queue(firings, now, pipe)
        return self.parse(firings, feed_since, iter(pipe.execute()[theirs:]))

    def queue(
        self,
        firings: Sequence[Firing],
        now: float,
        pipe: StatePipeline,
        reads: ShopperReads = _READS,
    ) -> int:
        """Queue the reads in `pipe`, each shopper's `reads` (`_READS` or more). Returns the
        mark the change feed is read past, for `parse`."""
        feed_since = self._catalog.queue_feed(pipe)  # firing reads the catalog as of now
        for f in firings:
            self._outbox.queue_state_read(f.mid, pipe)
            reads.queue(pipe, self._keys, f.job.user_id)
            self._policy.queue_reads(pipe, f.rule, f.job.user_id, f.mid, now)
        return feed_since

    def parse(
        self,
        firings: Sequence[Firing],
        feed_since: int,
        replies: Iterator[Any],
        reads: ShopperReads = _READS,
    ) -> list[ShopperRead]:
        """Each firing's reads from the replies of `queue`'s commands (the same `reads`)."""
        self._catalog.apply_feed(feed_since, next(replies), next(replies))
        shoppers = []
        for f in firings:
            message_state = next(replies) or ""
            state = reads.parse(f.job.user_id, replies)
            view = ShopperView(
                recent=state.recent,
                purchased=frozenset(state.purchases),
                cart=frozenset(state.cart_added),
                history=state.history,
            )
            policy = PolicyReads.from_replies(replies)
            known = bool(state.profile or state.devices)
            shoppers.append(ShopperRead(state, view, policy, known, message_state))
        return shoppers


@dataclass(eq=False)
class FiringReads:
    """What firing some jobs reads, read in a round trip of the caller's
    (`Firer.read_first`): a `StateStore.apply_events` `BatchReads`, whose replies
    `fire_many` uses when it fires those very jobs, once. Each shopper is read with
    `_extra_parts` too, for a `FollowUp` that takes its shoppers from here (a
    `ShopperSource`) instead of reading them again."""

    _reader: FiringReader
    _jobs: list[FireJob]
    _now: float
    _results: list[Decision]
    _firings: list[Firing]
    _extra_parts: frozenset[Part] = frozenset()
    _feed_since: int = 0
    _shoppers: list[ShopperRead] | None = None  # read, not used yet
    _reads: ShopperReads = field(init=False)  # of each shopper: `_READS`, `_extra_parts`
    _users: set[str] = field(init=False)  # the firings' shoppers
    _by_user: dict[str, Shopper] = field(init=False, default_factory=dict)  # as read

    def __post_init__(self) -> None:
        more = self._extra_parts
        self._reads = ShopperReads(_READS.parts | more) if more else _READS
        self._users = {f.job.user_id for f in self._firings}

    def queue(self, pipe: StatePipeline) -> None:
        self._feed_since = self._reader.queue(self._firings, self._now, pipe, self._reads)

    def take(self, replies: Iterator[Any]) -> None:
        self._shoppers = self._reader.parse(self._firings, self._feed_since, replies, self._reads)
        users = [f.job.user_id for f in self._firings]
        self._by_user = {u: s.state for u, s in zip(users, self._shoppers, strict=True)}

    def covers(self, user_id: str, reads: ShopperReads) -> bool:
        """Whether a firing here reads at least `reads` of this shopper (`reads` with no
        `items` or `since`: these reads are of the whole parts)."""
        return (
            reads.items is None
            and reads.since is None
            and reads.parts <= self._reads.parts
            and user_id in self._users
        )

    def shopper(self, user_id: str) -> Shopper:
        """The shopper as read, after `take`; KeyError for one no firing here reads."""
        return self._by_user[user_id]

    def made_for(
        self, jobs: Sequence[FireJob], now: float
    ) -> tuple[list[Decision], list[Firing], list[ShopperRead]] | None:
        """The decisions to fill, the firings and what was read of their shoppers, if
        it was read for `jobs` at `now` (and not used before); else None."""
        if self._shoppers is None or now != self._now or list(jobs) != self._jobs:
            return None
        shoppers, self._shoppers = self._shoppers, None
        return self._results, self._firings, shoppers
