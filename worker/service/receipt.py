"""What a worker does with a message before any task body runs.

A message that cannot become a task call would otherwise vanish into Celery's log: a
body that is not JSON (Celery logs it and acks), kwargs or args of the wrong JSON type
(the pool process fails "outside the body" and the message is dropped), a body Celery
cannot unpack (celery 5.6 crashes the whole worker on it), a task name no pushrec worker
knows, headers Celery refuses (a malformed `eta`). Each is kept in the rejected stream
with a code (`not_json`, `bad_call`, `unknown_task`), counted, and then dropped, as bad
input is. What is kept goes through the stream's redaction (`store/redaction.py`), which
finds secrets by field name; values that have no field name (positional arguments, a
body that is not JSON) are never kept, only their size and fingerprint.

These run in the worker's consumer (the main process), which opens its own `Runtime`
for the record. If the record can't be written (Redis away), the message is dropped
after an ERROR line all the same: it can never become a task, and requeueing it would
spin the consumer until Redis is back (a deliberate exception to "nothing unrecorded").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from kombu.exceptions import DecodeError

from push import fingerprint
from worker.service.runtime import Runtime
from worker.store.redaction import without_quoted

log = logging.getLogger(__name__)

UNKNOWN_TASK = "unknown_task"  # the task field of its records: a typo is not a metric label
_EMBED_LISTS = ("callbacks", "errbacks", "chain")

Strategy = Callable[..., Any]


class _App(Protocol):
    def runtime(self) -> Runtime: ...


def checked_strategy(app: _App, task_name: str, strategy: Strategy) -> Strategy:
    """Wrap a task's Celery strategy (what the consumer calls for each message of that
    task) so an unusable message is recorded and acked instead of reaching the pool."""

    def handle(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> Any:
        problem = _unusable(message)
        if problem is None:
            return strategy(message, body, ack, reject, callbacks, **kw)
        code, reason, kept = problem
        record(app, task_name, code, reason, kept)
        message.ack()
        return None

    return handle


def record_unknown_task(app: _App, message: Any, name: str, task_id: str) -> None:
    """A message for a task name no pushrec worker knows (a typo in a producer): its
    kwargs are kept (redacted) to replay under the right name."""
    try:
        payload: Any = message.payload
    except DecodeError:
        payload = None
    kept: dict[str, Any] = {"id": task_id, "task": str(name)[:200]}
    if isinstance(payload, list) and len(payload) == 3 and isinstance(payload[1], dict):
        kept.update(args=_withheld(payload[0]), kwargs=payload[1])
    else:
        kept["body"] = _withheld(message.body)
    record(app, UNKNOWN_TASK, UNKNOWN_TASK, f"no task {str(name)[:100]!r}", kept)


def record_refused(app: _App, message: Any, exc: BaseException | None) -> None:
    """A message Celery itself refused before any strategy ran (no task name, a malformed
    `eta` or `expires`)."""
    headers = message.headers or {}
    name = str(headers.get("task", UNKNOWN_TASK))[:200]
    why = without_quoted(str(exc))[:200] if exc else "not a task message"
    reason = f"refused by Celery: {why}"
    kept = {"id": headers.get("id"), "task": name, "body": _withheld(message.body)}
    record(app, UNKNOWN_TASK, "bad_call", reason, kept)


def record(app: _App, task_name: str, code: str, reason: str, kept: Any) -> None:
    try:
        app.runtime().rejected.record(task_name, code, reason, kept)
    except Exception:
        log.exception("%s: could not record an unusable message (%s): dropped", task_name, code)


def _unusable(message: Any) -> tuple[str, str, Any] | None:
    """(code, reason, what to keep) for a message that can't become a call, else None."""
    headers = message.headers or {}
    task_id = headers.get("id")
    try:
        payload = message.payload  # decoded once here; Celery reuses the decoded body
    except DecodeError as exc:
        reason = f"message body is not JSON: {str(exc)[:200]}"
        return "not_json", reason, {"id": task_id, "body": _withheld(message.body)}
    if isinstance(payload, dict) and "args" in payload:  # protocol 1, as Celery tells it
        args, kwargs, embed = payload["args"], payload.get("kwargs", {}), {}
    elif isinstance(payload, list) and len(payload) == 3:  # protocol 2: [args, kwargs, embed]
        args, kwargs, embed = payload
    else:  # Celery would fail to unpack it, and crash the whole worker (celery 5.6)
        reason = f"message body must be [args, kwargs, embed], got {_kind(payload)}"
        return "bad_call", reason, {"id": task_id, "body": _withheld(message.body)}
    if not isinstance(kwargs, dict) or not isinstance(args, list):
        reason = (
            f"kwargs must be a JSON object and args an array, got {_kind(kwargs)} and {_kind(args)}"
        )
        return "bad_call", reason, {"id": task_id, "body": _withheld(message.body)}
    if not _valid_embed(embed):
        reason = "the body's third part (callbacks, errbacks, chain, chord) is malformed"
        return "bad_call", reason, {"id": task_id, "args": _withheld(args), "kwargs": kwargs}
    return None


def _withheld(value: Any) -> str:
    """What a record keeps of a value that has no field name to redact it by."""
    if isinstance(value, bytes | str):
        return f"<withheld: {len(value)} bytes, {fingerprint(value)}>"
    if isinstance(value, list):
        return f"<withheld: {len(value)} values>"
    return f"<withheld: {type(value).__name__}>"


def _valid_embed(embed: Any) -> bool:
    """Celery reads these itself (`embed.get("chord")`, callbacks applied after success)."""
    if not isinstance(embed, dict):
        return False
    lists = all(embed.get(k) is None or isinstance(embed[k], list) for k in _EMBED_LISTS)
    return lists and (embed.get("chord") is None or isinstance(embed["chord"], dict))


def _kind(value: Any) -> str:
    return f"an array of {len(value)}" if isinstance(value, list) else type(value).__name__
