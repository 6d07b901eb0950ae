"""Messages pushrec decided to send: one record per message id, created once.

The message id is derived from (rule, shopper, trigger), so a redelivered task or a
duplicate trigger finds the record already there (`SET NX`) and sends nothing new.
A message's state is `queued`, then `sent`, `suppressed`, `failed`, `held_out` (a holdout
cell's message, stopped where it would have gone to the gateway), or parked in the
delayed set as `retrying` or `deferred` (quiet hours began before it went out). Each
device a message goes to has its own ledger entry: `sending` before the gateway call,
then `sent`, `invalid`, `failed` or `retry`. A worker that dies mid-send leaves
`sending`; the redelivered task sends again and the collapse id (from the message id)
makes the device replace, not repeat, the notification.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from worker.store.client import StatePipeline, StateRedis
from worker.store.keys import Keys
from worker.store.scripts import Scripts

log = logging.getLogger(__name__)

MESSAGE_TTL_S = 30 * 86_400
# A device left `sending` longer than this by another task was abandoned by a dead worker
# (one send attempt is bounded far below it by the HTTP timeouts).
SEND_LEASE_S = 120
# States in which a message no longer waits for a deliver task: settled, parked in the
# delayed set (a retry, or deferred to the end of quiet hours), or its deliver task parked
# in the dead-letter stream (`pushrec dead-letters replay` sends it again).
_OFF_THE_QUEUE = frozenset(
    {"sent", "suppressed", "failed", "held_out", "retrying", "deferred", "dead_lettered"}
)
# States a delivery leaves alone: settled for good.
SETTLED = frozenset({"sent", "suppressed", "failed", "held_out"})
_ATTEMPTS_KEPT = 50
_INDEX_REPLIES = 3  # commands `Outbox._index` queues


def message_id(rule: str, user_id: str, trigger_id: str) -> str:
    """Stable id of the message a rule sends a shopper for one trigger (<= 64 chars)."""
    digest = hashlib.sha256(f"{rule}\n{user_id}\n{trigger_id}".encode()).hexdigest()
    return f"m{digest[:31]}"


@dataclass
class MessageRecord:
    """What was decided; the push worker builds one gateway message per device from it."""

    id: str
    rule: str
    user_id: str
    trigger_id: str
    items: list[str]
    title: str
    body: str
    purpose: str
    channels: list[str]
    created_at: float
    link: str | None = None
    image: str | None = None
    coupon: str | None = None  # the issued code
    offer: dict[str, Any] | None = None  # its offer (`IssuedCoupon.as_dict`)
    locale: str = "en"
    ttl_s: int = 86_400
    data: dict[str, str] = field(default_factory=dict)
    cell: str = "treated"  # `holdout`: taken through the send-time checks, never sent

    def to_json(self) -> str:
        # the fields as they are (JSON values all): `asdict` would deep-copy each first,
        # a tenth of a firing's CPU in a profile of bench/hot_path.py
        return json.dumps(vars(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> MessageRecord:
        return cls(**json.loads(text))


class Creation(NamedTuple):
    """What `Outbox.create_many` (or `queue_create` in a round trip of the caller's) did
    with one record."""

    created: bool  # by this call: deliver it
    before: str  # the message's state before ('' if new)
    stored: bool  # this very record was stored, with a new state (nothing earlier left)


class Outbox:
    def __init__(self, client: StateRedis, keys: Keys, scripts: Scripts) -> None:
        self._client = client
        self._keys = keys
        self._scripts = scripts

    def create_many(self, records: Sequence[MessageRecord]) -> list[Creation]:
        """Store each record, in state `queued`, unless its id exists (one round trip).
        A record whose state was never written (a try that crashed in between) counts as
        created by this call."""
        pipe = self._client.pipeline(transaction=False)
        self.queue_create(records, pipe)
        return self.created(records, iter(pipe.execute()))  # empty: no round trip

    def queue_create(self, records: Sequence[MessageRecord], pipe: StatePipeline) -> None:
        """Queue `create_many`'s commands in `pipe`, a round trip of the caller's."""
        for record in records:
            k = self._keys.message(record.id)
            pipe.set(k.record, record.to_json(), nx=True, ex=MESSAGE_TTL_S)
            pipe.hget(k.state, "state")
            pipe.hsetnx(k.state, "state", "queued")
            pipe.expire(k.state, MESSAGE_TTL_S)
            self._index(record, pipe)

    def created(self, records: Sequence[MessageRecord], replies: Iterator[Any]) -> list[Creation]:
        """What `queue_create`'s commands did with each record, from their replies."""
        out = []
        for _ in records:
            stored, before, state_new = next(replies), next(replies), next(replies)
            for _ in range(1 + _INDEX_REPLIES):
                next(replies)
            out.append(
                Creation(bool(stored) or bool(state_new), before or "", bool(stored and state_new))
            )
        return out

    def _index(self, record: MessageRecord, pipe: StatePipeline) -> None:
        """List the message on its shopper (erasure finds it there) for as long as
        messages are kept; older entries go as new ones come."""
        key = self._keys.user(record.user_id).messages
        pipe.zadd(key, {record.id: record.created_at})
        pipe.zremrangebyscore(key, "-inf", f"({record.created_at - MESSAGE_TTL_S!r}")
        pipe.expire(key, MESSAGE_TTL_S)

    def queue_state_read(self, mid: str, pipe: StatePipeline) -> None:
        """Queue in `pipe` a read of the message's delivery state (reply None: no message
        yet, or one whose creating try crashed before its state was written)."""
        pipe.hget(self._keys.message(mid).state, "state")

    def mark_queued(self, record: MessageRecord, pipe: StatePipeline) -> None:
        """List the message among those waiting for their deliver task (in `pipe`): the
        scheduler re-sends deliveries that stay queued too long."""
        pipe.zadd(self._queued(record.id), {record.id: record.created_at})

    def load_many(self, mids: Sequence[str]) -> list[tuple[MessageRecord | None, dict[str, str]]]:
        """Each message's record and state hash, in one round trip."""
        pipe = self._client.pipeline(transaction=False)
        for mid in mids:
            k = self._keys.message(mid)
            pipe.get(k.record)
            pipe.hgetall(k.state)
        replies = iter(pipe.execute() if mids else [])
        out: list[tuple[MessageRecord | None, dict[str, str]]] = []
        for mid in mids:
            raw, state = next(replies), next(replies)
            out.append((_parse_record(mid, raw) if raw else None, state))
        return out

    def get(self, mid: str) -> MessageRecord | None:
        raw = self._client.get(self._keys.message(mid).record)
        return MessageRecord.from_json(raw) if raw else None  # type: ignore[arg-type]

    def state(self, mid: str) -> dict[str, str]:
        state: dict[str, str] = self._client.hgetall(self._keys.message(mid).state)  # type: ignore[assignment]
        return state

    def set_state(self, mid: str, state: str, pipe: StatePipeline, reason: str = "") -> None:
        pipe.hset(
            self._keys.message(mid).state,
            mapping={"state": state, "updated_at": str(time.time()), "reason": reason},
        )
        if state in _OFF_THE_QUEUE:
            pipe.zrem(self._queued(mid), mid)

    def unqueue(self, mids: Sequence[str], pipe: StatePipeline) -> None:
        """Take messages off the queued list for good (in `pipe`): their record is gone
        (expired, or the shopper erased), so no delivery can ever settle them."""
        for mid in mids:
            pipe.zrem(self._queued(mid), mid)

    def _queued(self, mid: str) -> str:
        """The shard of the queued list that message `mid` is listed in."""
        return self._keys.outbox_queued(self._keys.shard(mid))

    def stuck(self, now: float, older_than_s: float, limit: int = 1000) -> list[str]:
        """Messages queued more than `older_than_s` ago whose delivery never started or
        never finished (a lost task, a killed worker); each is returned at most once per
        `older_than_s`. Up to `limit` from each shard."""
        read = self._client.pipeline(transaction=False)
        for shard in self._keys.all_shards:
            key = self._keys.outbox_queued(shard)
            read.zrangebyscore(key, "-inf", now - older_than_s, start=0, num=limit)
        found: list[list[str]] = read.execute()
        touch = self._client.pipeline(transaction=False)
        for shard, mids in zip(self._keys.all_shards, found, strict=True):
            if mids:
                touch.zadd(self._keys.outbox_queued(shard), dict.fromkeys(mids, now), xx=True)
        touch.execute()
        return [mid for mids in found for mid in mids]

    def queued_count(self) -> int:
        """How many messages are listed as awaiting delivery (every shard)."""
        pipe = self._client.pipeline(transaction=False)
        for shard in self._keys.all_shards:
            pipe.zcard(self._keys.outbox_queued(shard))
        return sum(int(n) for n in pipe.execute())

    def claim_devices(self, sends: Sequence[tuple[str, str]], owner: str, now: float) -> list[bool]:
        """Atomically mark each (message id, device id) `sending` by `owner` (the task
        id) unless it settled or another live delivery is sending it (one round trip).
        True where this attempt should send."""
        pipe = self._client.pipeline(transaction=False)
        self.queue_claims(pipe, sends, owner, now)
        return [bool(claimed) for claimed in pipe.execute()] if sends else []

    def queue_claims(
        self,
        pipe: StatePipeline,
        sends: Sequence[tuple[str, str]],
        owner: str,
        now: float,
    ) -> None:
        """`claim_devices` in the caller's pipeline: one reply per send, 1 if claimed."""
        for mid, device_id in sends:
            self._scripts.queue(
                pipe,
                self._scripts.claim_device,
                [self._keys.message(mid).state],
                [f"dev:{device_id}", owner, repr(now), SEND_LEASE_S],
            )

    def unclaim_device(self, mid: str, device_id: str, pipe: StatePipeline) -> None:
        """Undo a claim this delivery made and did not send on (in `pipe`)."""
        pipe.hdel(self._keys.message(mid).state, f"dev:{device_id}")

    def settle_device(self, mid: str, device_id: str, status: str, pipe: StatePipeline) -> None:
        pipe.hset(self._keys.message(mid).state, f"dev:{device_id}", status)

    def first_delivery(self, mid: str, now: float, pipe: StatePipeline) -> None:
        """Note the first time any device took the message; the reply (1 the first
        time, else 0) lets the caller count each message delivered once."""
        pipe.hsetnx(self._keys.message(mid).state, "delivered_at", repr(now))

    def add_attempts(
        self, mid: str, attempts: Sequence[dict[str, Any]], pipe: StatePipeline
    ) -> None:
        key = self._keys.message(mid).attempts
        pipe.rpush(key, *(json.dumps(a, separators=(",", ":")) for a in attempts))
        pipe.ltrim(key, -_ATTEMPTS_KEPT, -1)
        pipe.expire(key, MESSAGE_TTL_S)

    def attempts(self, mid: str) -> list[dict[str, Any]]:
        rows = self._client.lrange(self._keys.message(mid).attempts, 0, -1)
        return [json.loads(row) for row in rows]


def _parse_record(mid: str, raw: str) -> MessageRecord | None:
    """The record, or None (logged) if it cannot be read: one bad record must not stop
    the rest of a batch."""
    try:
        return MessageRecord.from_json(raw)
    except (ValueError, TypeError):
        log.exception("message %s: unreadable record", mid)
        return None
