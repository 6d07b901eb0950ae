"""Rejected input: counted, logged with its reason, kept in a capped stream to inspect."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis

from worker.store.keys import Keys
from worker.store.metrics import Metrics

log = logging.getLogger(__name__)

# A record keeps the whole call, so it can be replayed: a call's size is bounded by the
# broker message it came in. Only past this (an oversize input, never replayable anyway)
# is the text cut, and the record says so (`truncated`).
PAYLOAD_MAX_CHARS = 1_000_000


class RejectedLog:
    def __init__(self, client: redis.Redis, keys: Keys, metrics: Metrics, maxlen: int) -> None:
        self._client = client
        self._key = keys.rejected_log
        self._metrics = metrics
        self._maxlen = maxlen

    def record(
        self,
        task: str,
        code: str,
        reason: str,
        payload: Any,
        pipe: redis.client.Pipeline | None = None,
    ) -> None:
        """Keep `payload` (whole, up to `PAYLOAD_MAX_CHARS`) with its reason and count it
        under `<task>.rejected`."""
        text = storable_json(payload)
        reason = reason.encode("utf-8", "backslashreplace").decode("utf-8")
        log.warning("rejected %s input (%s): %s", task, code, reason)
        target = pipe if pipe is not None else self._client.pipeline(transaction=False)
        target.xadd(
            self._key,
            {
                "task": task,
                "code": code,
                "reason": reason,
                "payload": text[:PAYLOAD_MAX_CHARS],
                "at": f"{time.time():.3f}",
                **({"truncated": str(len(text))} if len(text) > PAYLOAD_MAX_CHARS else {}),
            },
            maxlen=self._maxlen,
            approximate=True,
        )
        self._metrics.add({f"{task}.rejected": 1, f"{task}.rejected.{code}": 1}, pipe=target)
        if pipe is None:
            target.execute()

    def recent(self, count: int = 20) -> list[dict[str, str]]:
        rows: list[tuple[str, dict[str, str]]] = self._client.xrevrange(  # type: ignore[assignment]
            self._key, count=count
        )
        return [{"id": rid, **fields} for rid, fields in rows]


def storable_json(payload: Any) -> str:
    """`payload` as JSON text that Redis can store as UTF-8, whatever it holds: non-ASCII
    kept as is, unless the payload has lone surrogates (valid JSON, not UTF-8), which are
    then escaped (`\\ud800`), so the text still reads back to the same value."""
    try:
        text = json.dumps(payload, default=repr, ensure_ascii=False)
    except (TypeError, ValueError):  # circular, or an int past Python's digit limit
        return f"<not JSON: {type(payload).__name__}>"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(payload, default=repr, ensure_ascii=True)
    return text
