"""Rejected input: counted, logged with its reason, kept in a capped stream to inspect.

What an entry keeps of the payload is decided by `redaction.stream_fields`: secrets
replaced by fingerprints, the shoppers it names indexed for erasure.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from worker.store.client import StatePipeline, StateRedis
from worker.store.keys import Keys
from worker.store.metrics import Metrics
from worker.store.redaction import stream_fields

log = logging.getLogger(__name__)


class RejectedLog:
    def __init__(self, client: StateRedis, keys: Keys, metrics: Metrics, maxlen: int) -> None:
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
        pipe: StatePipeline | None = None,
    ) -> None:
        """Keep `payload` (redacted and truncated: `redaction.stream_fields`) with its
        reason and count it under `<task>.rejected`."""
        reason = reason.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates
        log.warning("rejected %s input (%s): %s", task, code, reason)
        target = pipe if pipe is not None else self._client.pipeline(transaction=False)
        entry: dict[Any, Any] = {  # redis-py's stream field types are over-narrow
            "task": task,
            "code": code,
            "reason": reason,
            **stream_fields(payload),
            "at": f"{time.time():.3f}",
        }
        target.xadd(
            self._key,
            entry,
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
