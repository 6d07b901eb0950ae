"""What a worker does with a message before any task body runs.

A message that cannot become a task call would otherwise vanish into Celery's log: a
body that is not JSON (Celery logs it and acks), kwargs or args of the wrong JSON type
(the pool process fails "outside the body" and the message is dropped), a task name no
pushrec worker knows (Celery rejects it). Each is kept in the rejected stream with a code
(`not_json`, `bad_call`, `unknown_task`), counted, and then dropped, as bad input is.

These run in the worker's consumer (the main process), which opens its own `Runtime`
for the record. If the record can't be written (Redis away), the message is still
dropped after an ERROR line: it can never become a task, and requeueing it would spin
the consumer until Redis is back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from kombu.exceptions import DecodeError

from worker.service.runtime import Runtime

log = logging.getLogger(__name__)

_BODY_KEPT = 100_000  # characters of an undecodable body kept for inspection
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
        code, reason, payload = problem
        record(app, task_name, code, reason, payload)
        message.ack()
        return None

    return handle


def record_unknown_task(app: _App, message: Any, name: str, task_id: str) -> None:
    """A message for a task name no pushrec worker knows (a typo in a producer)."""
    try:
        payload: Any = message.payload
    except DecodeError:
        payload = _body_text(message)
    record(
        app,
        str(name),
        "unknown_task",
        f"no task {str(name)[:100]!r} (message {task_id})",
        {"id": task_id, "body": payload},
    )


def record(app: _App, task_name: str, code: str, reason: str, payload: Any) -> None:
    try:
        app.runtime().rejected.record(task_name, code, reason, payload)
    except Exception:
        log.exception("%s: could not record an unusable message (%s): dropped", task_name, code)


def _unusable(message: Any) -> tuple[str, str, Any] | None:
    """(code, reason, what to keep) for a message that can't become a call, else None."""
    headers = message.headers or {}
    try:
        payload = message.payload  # decoded once here; Celery reuses the decoded body
    except DecodeError as exc:
        return (
            "not_json",
            f"message body is not JSON: {str(exc)[:200]}",
            {"id": headers.get("id"), "body": _body_text(message)},
        )
    if isinstance(payload, dict) and "args" in payload:  # protocol 1, as Celery tells it
        args, kwargs, embed = payload["args"], payload.get("kwargs", {}), {}
    elif isinstance(payload, list) and len(payload) == 3:  # protocol 2: [args, kwargs, embed]
        args, kwargs, embed = payload
    else:  # Celery would fail to unpack it, and crash the whole worker (celery 5.6)
        return (
            "bad_call",
            f"message body must be [args, kwargs, embed], got {_kind(payload)}",
            {"id": headers.get("id"), "body": payload},
        )
    if not _valid_embed(embed):
        return (
            "bad_call",
            "the body's third part (callbacks, errbacks, chain, chord) is malformed",
            {"id": headers.get("id"), "args": args, "kwargs": kwargs, "embed": embed},
        )
    if not isinstance(kwargs, dict) or not isinstance(args, list):
        return (
            "bad_call",
            f"kwargs must be a JSON object and args an array, got {type(kwargs).__name__} "
            f"and {type(args).__name__}",
            {"id": headers.get("id"), "args": args, "kwargs": kwargs},
        )
    return None


def _valid_embed(embed: Any) -> bool:
    """Celery reads these itself (`embed.get("chord")`, callbacks applied after success)."""
    if not isinstance(embed, dict):
        return False
    lists = all(embed.get(k) is None or isinstance(embed[k], list) for k in _EMBED_LISTS)
    return lists and (embed.get("chord") is None or isinstance(embed["chord"], dict))


def _kind(value: Any) -> str:
    return f"an array of {len(value)}" if isinstance(value, list) else type(value).__name__


def _body_text(message: Any) -> str:
    body = message.body
    text = body.decode("utf-8", "backslashreplace") if isinstance(body, bytes) else str(body)
    return text[:_BODY_KEPT]
