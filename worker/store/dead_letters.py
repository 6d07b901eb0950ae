"""Poison messages end here: a task message the broker keeps handing out without it ever
finishing (its worker process dies on it, or it runs over the hard time limit, and late
acks put it back) is counted per delivery and, past `Settings.max_deliveries`, parked in
a capped stream with its reason instead of running again. An operator lists the stream
and replays an entry once the cause is fixed (`pushrec dead-letters`).

Only redeliveries are counted (the broker flags them), so a first delivery, the common
case, costs no Redis round trip.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from worker.store.client import StateRedis
from worker.store.keys import Keys
from worker.store.metrics import Metrics
from worker.store.redaction import PAYLOAD_FIELD, redact, stream_fields

log = logging.getLogger(__name__)

COUNT_TTL_S = 7 * 86_400  # longer than any redelivery loop: visibility timeout x deliveries


@dataclass(frozen=True)
class DeadLetter:
    """One parked task call: `call` as kept ({"args": [...], "kwargs": {...}}, redacted
    where it held secrets); `replayable` when nothing was redacted, so sending the same
    task with `call["kwargs"]` again is the same call."""

    entry_id: str
    task: str
    task_id: str
    reason: str
    deliveries: int
    call: dict[str, Any] | None  # None: kept as text only (not JSON-able)
    call_text: str
    replayable: bool
    at: float

    @classmethod
    def from_fields(cls, entry_id: str, fields: dict[str, str]) -> DeadLetter:
        text = fields.get(PAYLOAD_FIELD, "")
        try:
            loaded = json.loads(text)
        except ValueError:
            loaded = None
        call = loaded if isinstance(loaded, dict) else None
        return cls(
            entry_id=entry_id,
            task=fields.get("task", ""),
            task_id=fields.get("task_id", ""),
            reason=fields.get("reason", ""),
            deliveries=int(fields.get("deliveries", "0") or 0),
            call=call,
            call_text=text,
            replayable=fields.get("replayable") == "1"
            and call is not None
            and isinstance(call.get("kwargs"), dict),
            at=float(fields.get("at", "0") or 0),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.entry_id,
            "task": self.task,
            "task_id": self.task_id,
            "reason": self.reason,
            "deliveries": self.deliveries,
            "at": self.at,
            "call": self.call if self.call is not None else self.call_text,
            "replayable": self.replayable,
        }


class DeadLetters:
    def __init__(self, client: StateRedis, keys: Keys, metrics: Metrics, maxlen: int) -> None:
        self._client = client
        self._keys = keys
        self._metrics = metrics
        self._maxlen = maxlen

    def count_redelivery(self, task_id: str) -> int:
        """Count one more redelivery of `task_id`; returns how many deliveries that makes
        (the first one included). Redis errors propagate."""
        key = self._keys.deliveries(task_id)
        pipe = self._client.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, COUNT_TTL_S)
        redeliveries, _ = pipe.execute()
        return int(redeliveries) + 1

    def forget_count(self, task_id: str) -> None:
        """Drop `task_id`'s count: its next delivery is one pushrec asked for (a requeue
        after a Redis outage), not a sign of poison."""
        self._client.delete(self._keys.deliveries(task_id))

    def park(self, task: str, task_id: str, reason: str, call: Any, deliveries: int) -> str:
        """Keep `call` ({"args": [...], "kwargs": {...}}) in the stream, redacted and
        indexed by shopper as the rejected stream is (`redaction.stream_fields`), count it,
        and forget its delivery count."""
        replayable = (
            isinstance(call, dict)
            and not call.get("args")
            and isinstance(call.get("kwargs"), dict)
            and redact(call) == call
        )
        entry: dict[Any, Any] = {  # redis-py's stream field types are over-narrow
            "task": task,
            "task_id": task_id,
            "reason": reason,
            "deliveries": str(deliveries),
            **stream_fields(call),
            "replayable": "1" if replayable else "0",
            "at": f"{time.time():.3f}",
        }
        pipe = self._client.pipeline(transaction=False)
        pipe.xadd(
            self._keys.dead_letters,
            entry,
            maxlen=self._maxlen,
            approximate=True,
        )
        pipe.delete(self._keys.deliveries(task_id))
        self._metrics.add({"tasks.dead_lettered": 1, f"{task}.dead_lettered": 1}, pipe=pipe)
        entry_id = str(pipe.execute()[0])
        log.error("dead-lettered %s %s after %d deliveries: %s", task, task_id, deliveries, reason)
        return entry_id

    def recent(self, count: int = 20) -> list[DeadLetter]:
        rows: list[tuple[str, dict[str, str]]] = self._client.xrevrange(  # type: ignore[assignment]
            self._keys.dead_letters, count=count
        )
        return [DeadLetter.from_fields(rid, fields) for rid, fields in rows]

    def get(self, entry_id: str) -> DeadLetter | None:
        rows: list[tuple[str, dict[str, str]]] = self._client.xrange(  # type: ignore[assignment]
            self._keys.dead_letters, min=entry_id, max=entry_id
        )
        return DeadLetter.from_fields(*rows[0]) if rows else None

    def remove(self, entry_id: str) -> bool:
        return bool(self._client.xdel(self._keys.dead_letters, entry_id))

    def size(self) -> int:
        return int(self._client.xlen(self._keys.dead_letters))
