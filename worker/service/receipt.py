"""What a worker does with a message before any task body runs.

A message that cannot become a task call would otherwise vanish into Celery's log: a
body that is not JSON (Celery logs it and acks), kwargs or args of the wrong JSON type
(the pool process fails "outside the body" and the message is dropped), a body Celery
cannot unpack (celery 5.6 crashes the whole worker on it), a task name no pushrec worker
knows, headers Celery refuses (a malformed `eta`), headers of a shape Celery's consumer
cannot read at all (`refused_headers`: a `timelimit` it can't unpack, an `id` it can't
hash, no `id`; each killed the worker, whose unacked message then came back at the head
of the queue for the next one). Each is kept in the rejected stream
with a code (`not_json`, `bad_call`, `unknown_task`), counted, and then dropped, as bad
input is; so is a call Celery discards because its `expires` has passed (`expired`).
What is kept goes through the stream's redaction (`store/redaction.py`), which finds
secrets by field name; values that have no field name (positional arguments, a
body that is not JSON) are never kept, only their size and fingerprint.

These run in the worker's consumer (the main process), which opens its own `Runtime`
for the record. If the record can't be written (Redis away), the message is dropped
after an ERROR line all the same: it can never become a task, and requeueing it would
spin the consumer until Redis is back (a deliberate exception to "nothing unrecorded").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection
from typing import Any, Protocol

from kombu.exceptions import DecodeError

from push import fingerprint
from worker.service.runtime import Runtime
from worker.store.redaction import without_quoted

log = logging.getLogger(__name__)

UNKNOWN_TASK = "unknown_task"  # the task field of its records: a typo is not a metric label
_EMBED_LISTS = ("callbacks", "errbacks", "chain")
_ID_MAX_CHARS = 255  # a task id names keys (the redelivery count) and log lines
_TEXT_MAX_CHARS = 200  # of a name or an error kept in a record
# Protocol 2's headers that Celery reads, by the JSON type each must have when present
# (null allowed); headers it does not read may be anything
_STRING_HEADERS = ("eta", "expires", "root_id", "parent_id", "group", "shadow",
                   "argsrepr", "kwargsrepr", "origin", "lang")  # fmt: skip
_INT_HEADERS = ("retries", "group_index", "replaced_task_nesting")

Strategy = Callable[..., Any]

#: What reading a message of an unexpected shape raises, in Celery's consumer or in
#: kombu's decoding of an envelope (ValueError covers JSON, base64 and UTF-8 errors);
#: not the broker's connection errors, which kombu handles
SHAPE_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError)


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
    payload = _payload_or_none(message)
    kept: dict[str, Any] = {"id": task_id, "task": str(name)[:_TEXT_MAX_CHARS]}
    if isinstance(payload, list) and len(payload) == 3 and isinstance(payload[1], dict):
        kept.update(args=_withheld(payload[0]), kwargs=payload[1])
    else:
        kept["body"] = _withheld(message.body)
    record(app, UNKNOWN_TASK, UNKNOWN_TASK, f"no task {str(name)[:100]!r}", kept)


def record_refused(app: _App, message: Any, exc: BaseException | None) -> None:
    """A message Celery itself refused before any strategy ran (no task name, a malformed
    `eta` or `expires`)."""
    why = without_quoted(str(exc))[:_TEXT_MAX_CHARS] if exc else "not a task message"
    kept = {**_identity(_headers(message)), "body": _withheld(message.body)}
    record(app, UNKNOWN_TASK, "bad_call", f"refused by Celery: {why}", kept)


def refused_headers(message: Any) -> tuple[str, Any] | None:
    """(reason, what to keep) for a protocol-2 message whose headers Celery's consumer
    can't read (module doc), else None; a message without a `task` header is Celery's
    to judge (protocol 1, or not a task message)."""
    headers = _headers(message)
    if "task" not in headers:
        return None
    problem = _header_problem(headers)
    if problem is None:
        return None
    kept = _identity(headers)
    payload = _payload_or_none(message)
    if isinstance(payload, list) and len(payload) == 3 and isinstance(payload[1], dict):
        kept["kwargs"] = payload[1]  # well formed: kept to replay with good headers
    else:
        kept["body"] = _withheld(message.body)
    return f"header {problem}", kept


def record_undecodable(app: _App, message: Any, exc: BaseException) -> None:
    """A message whose body Celery could not decode (a `compression` it does not know,
    a serializer it does not accept, on the path no strategy sees): Celery acks it."""
    kept = {**_identity(_headers(message)), "body": _withheld(message.body)}
    why = without_quoted(str(exc))[:_TEXT_MAX_CHARS] or type(exc).__name__
    record(app, UNKNOWN_TASK, "not_json", f"the message body could not be decoded: {why}", kept)


def record_expired(app: _App, request: Any) -> None:
    """A call that reached a worker after its `expires`: Celery discards it (as the
    producer asked); it is recorded with its kwargs, to replay if it still matters."""
    task = str(request.task)[:_TEXT_MAX_CHARS]  # a registered task's: it went through its strategy
    expires = str(request.expires)[:64]
    kept = {
        "id": str(request.id)[:_ID_MAX_CHARS],
        "task": task,
        "expires": expires,
        "kwargs": request.kwargs if isinstance(request.kwargs, dict) else {},
    }
    record(app, task, "expired", f"expired before a worker ran it (expires {expires})", kept)


def _payload_or_none(message: Any) -> Any:
    """The message's decoded body for a record, or None when it does not decode: not
    JSON, a content type the worker does not accept (`ContentDisallowed`), a compression
    it does not know; only a record wants it."""
    try:
        return message.payload
    except Exception:
        return None


def _headers(message: Any) -> dict[str, Any]:
    """The message's headers, or none when they are not an object."""
    return message.headers if isinstance(message.headers, dict) else {}


def _identity(headers: dict[str, Any]) -> dict[str, Any]:
    """What a record keeps of a message's `id` and `task` headers, whatever their type."""
    task_id, name = headers.get("id"), headers.get("task", UNKNOWN_TASK)
    return {
        "id": task_id[:_ID_MAX_CHARS] if isinstance(task_id, str) else _withheld(task_id),
        "task": name[:_TEXT_MAX_CHARS] if isinstance(name, str) else _withheld(name),
    }


def task_of(message: Any, known: Collection[str]) -> str:
    """The task field of a message's record: its task name if a pushrec task has it,
    else `UNKNOWN_TASK`."""
    name = _headers(message).get("task")
    return name if isinstance(name, str) and name in known else UNKNOWN_TASK


def _header_problem(headers: dict[str, Any]) -> str | None:
    """What is wrong with the headers Celery reads ("'id' ..."), or None."""
    if not isinstance(headers["task"], str):
        return f"'task' must be a string, got {_kind(headers['task'])}"
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not 0 < len(task_id) <= _ID_MAX_CHARS:
        return f"'id' must be a string of 1 to {_ID_MAX_CHARS} characters, got {_kind(task_id)}"
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, list) and len(limits) == 2 and all(map(_seconds_or_none, limits))
    ):
        return f"'timelimit' must be [hard, soft] (seconds or null), got {_kind(limits)}"
    for name in _STRING_HEADERS:
        if (value := headers.get(name)) is not None and not isinstance(value, str):
            return f"{name!r} must be a string, got {_kind(value)}"
    for name in _INT_HEADERS:
        value = headers.get(name)
        if value is not None and (type(value) is not int or value < 0):
            return f"{name!r} must be a whole number of at least 0, got {_kind(value)}"
    if (ignore := headers.get("ignore_result")) is not None and not isinstance(ignore, bool):
        return f"'ignore_result' must be true or false, got {_kind(ignore)}"
    return None


def _seconds_or_none(value: Any) -> bool:
    return value is None or (type(value) in (int, float) and math.isfinite(value) and value >= 0)


def record_unreadable(app: _App, exc: BaseException, text: str | None) -> None:
    """A broker message whose envelope kombu could not decode (`broker.py`): only its
    size and fingerprint are kept, when the error carries its text."""
    code = "not_json" if isinstance(exc, ValueError | RecursionError) else "bad_call"
    why = without_quoted(str(exc))[:_TEXT_MAX_CHARS] or type(exc).__name__
    kept = {"envelope": _withheld(text) if text is not None else "<not kept>"}
    record(app, UNKNOWN_TASK, code, f"the broker message is not a readable envelope: {why}", kept)


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
        reason = f"message body is not JSON: {str(exc)[:_TEXT_MAX_CHARS]}"
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
    if isinstance(value, list):
        return f"an array of {len(value)}"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    return "nothing" if value is None else type(value).__name__
