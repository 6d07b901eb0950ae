"""Messages pushrec decided to send: one record per message id, created once.

The message id is derived from (rule, shopper, trigger), so a redelivered task or a
duplicate trigger finds the record already there (`SET NX`) and sends nothing new.
Each device a message goes to has its own ledger entry: `sending` before the gateway
call, then `sent`, `invalid`, `failed` or `retry`. A worker that dies mid-send leaves
`sending`; the redelivered task sends again and the collapse id (from the message id)
makes the device replace, not repeat, the notification.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from worker.keys import Keys
from worker.scripts import Scripts

MESSAGE_TTL_S = 30 * 86_400
# A device left `sending` longer than this by another task was abandoned by a dead worker
# (one send attempt is bounded far below it by the HTTP timeouts).
SEND_LEASE_S = 120
# States in which a message no longer waits for a deliver task: settled, or parked as a
# retry in the delayed set.
_OFF_THE_QUEUE = frozenset({"sent", "suppressed", "failed", "retrying"})
_ATTEMPTS_KEPT = 50


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
    coupon: str | None = None
    locale: str = "en"
    ttl_s: int = 86_400
    data: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> MessageRecord:
        return cls(**json.loads(text))


class Outbox:
    def __init__(self, client: redis.Redis, keys: Keys, scripts: Scripts) -> None:
        self._client = client
        self._keys = keys
        self._scripts = scripts

    def create(self, record: MessageRecord) -> bool:
        """Store `record` unless its id exists; True if this call created it."""
        k = self._keys.message(record.id)
        created = bool(self._client.set(k.record, record.to_json(), nx=True, ex=MESSAGE_TTL_S))
        if created:
            pipe = self._client.pipeline(transaction=False)
            pipe.hset(k.state, mapping={"state": "queued", "updated_at": time.time()})
            pipe.expire(k.state, MESSAGE_TTL_S)
            pipe.zadd(self._keys.outbox_queued, {record.id: record.created_at})
            pipe.execute()
        return created

    def load(self, mid: str) -> tuple[MessageRecord | None, dict[str, str]]:
        """The record and its state hash, in one round trip."""
        k = self._keys.message(mid)
        pipe = self._client.pipeline(transaction=False)
        pipe.get(k.record)
        pipe.hgetall(k.state)
        raw, state = pipe.execute()
        return (MessageRecord.from_json(raw) if raw else None), state

    def get(self, mid: str) -> MessageRecord | None:
        raw = self._client.get(self._keys.message(mid).record)
        return MessageRecord.from_json(raw) if raw else None  # type: ignore[arg-type]

    def state(self, mid: str) -> dict[str, str]:
        state: dict[str, str] = self._client.hgetall(self._keys.message(mid).state)  # type: ignore[assignment]
        return state

    def set_state(self, mid: str, state: str, reason: str = "") -> None:
        self._client.hset(
            self._keys.message(mid).state,
            mapping={"state": state, "updated_at": str(time.time()), "reason": reason},
        )
        if state in _OFF_THE_QUEUE:
            self._client.zrem(self._keys.outbox_queued, mid)

    def stuck(self, now: float, older_than_s: float, limit: int = 1000) -> list[str]:
        """Messages queued more than `older_than_s` ago whose delivery never started or
        never finished (a lost task, a killed worker); each is returned at most once per
        `older_than_s`."""
        key = self._keys.outbox_queued
        mids: list[str] = self._client.zrangebyscore(  # type: ignore[assignment]
            key, "-inf", now - older_than_s, start=0, num=limit
        )
        if mids:
            self._client.zadd(key, dict.fromkeys(mids, now), xx=True)
        return mids

    def claim_device(self, mid: str, device_id: str, owner: str, now: float) -> bool:
        """Atomically mark a device `sending` by `owner` (the task id) unless it settled,
        or another live delivery is sending it. True if this attempt should send."""
        claimed = self._scripts.claim_device(
            keys=[self._keys.message(mid).state],
            args=[f"dev:{device_id}", owner, repr(now), SEND_LEASE_S],
        )
        return bool(claimed)

    def settle_device(self, mid: str, device_id: str, status: str) -> None:
        self._client.hset(self._keys.message(mid).state, f"dev:{device_id}", status)

    def add_attempt(self, mid: str, attempt: dict[str, Any]) -> None:
        key = self._keys.message(mid).attempts
        pipe = self._client.pipeline(transaction=False)
        pipe.rpush(key, json.dumps(attempt, separators=(",", ":")))
        pipe.ltrim(key, -_ATTEMPTS_KEPT, -1)
        pipe.expire(key, MESSAGE_TTL_S)
        pipe.execute()

    def attempts(self, mid: str) -> list[dict[str, Any]]:
        rows = self._client.lrange(self._keys.message(mid).attempts, 0, -1)
        return [json.loads(row) for row in rows]
