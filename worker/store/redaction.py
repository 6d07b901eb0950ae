"""What a stream may keep of a call: the one redaction for the rejected stream (and any
other stream that keeps payloads for replay, such as a dead-letter stream).

`stream_fields(payload)` is what a writer stores: the payload with every secret replaced
by a fingerprint, as JSON (truncated), and the shoppers it names in an indexed field, so
`names_shopper` (erasure) finds an entry by exact id, whatever the payload's encoding.
Event content, user ids and item ids are kept: they are what a replay needs.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final
from urllib.parse import urlsplit

from push.redact import fingerprint, safe_url
from worker.contract import canonical_id

# An entry keeps the whole call, so it can be replayed. A valid call of the contract fits
# (500 events of a batch, kept one entry per event when a batch fails); an entry past
# this is an oversize input, never replayable anyway: its text is cut, and the entry says
# so (`truncated`: the whole length). The bound times the stream's MAXLEN bounds its size.
PAYLOAD_MAX_CHARS: Final = 65_536
PAYLOAD_FIELD: Final = "payload"
USERS_FIELD: Final = "users"
TRUNCATED_FIELD: Final = "truncated"

# Fields whose value is replaced by its fingerprint, at any depth: device tokens (FCM,
# APNs, webhook URLs), Web Push endpoints and keys, and anything named like a secret.
SECRET_FIELDS: Final = frozenset(
    {
        "token",
        "endpoint",
        "keys",
        "p256dh",
        "auth",
        "secret",
        "password",
        "authorization",
        "api_key",
        "private_key",
        "credentials",
    }
)
# A Web Push subscription keeps its shape (endpoint and keys fingerprinted); anything else
# under this name (a string, a list) may hide an endpoint and is fingerprinted whole.
_SUBSCRIPTION: Final = "subscription"
_MAX_DEPTH: Final = 32


def redact(payload: Any) -> Any:
    """A copy of `payload` (a JSON-like value) safe to keep.

    Every field named in `SECRET_FIELDS`, at any depth, has its value replaced by
    `push.fingerprint` of it (a URL keeps its scheme and host: `push.safe_url`); a
    `subscription` object keeps its shape with its endpoint and keys replaced. Non-JSON
    values become their `repr`, nesting beyond 32 levels `"<too deep>"`. Never raises;
    `payload` is not modified.
    """
    return _redact(payload, 0)


def _redact(value: Any, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        return "<too deep>"
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = str(key)
            if name in SECRET_FIELDS or (name == _SUBSCRIPTION and not isinstance(item, dict)):
                out[name] = _fingerprint(item)
            else:
                out[name] = _redact(item, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_redact(item, depth + 1) for item in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def _fingerprint(value: Any) -> str:
    if isinstance(value, str):
        parts = urlsplit(value)
        return safe_url(value) if parts.scheme and parts.netloc else fingerprint(value)
    try:
        text = json.dumps(value, sort_keys=True, default=repr)
    except (TypeError, ValueError):  # circular
        text = repr(value)
    return fingerprint(text)


def shoppers_in(payload: Any) -> list[str]:
    """The user ids named by every `user_id` field of `payload`, at any depth, in their
    stored form (`contract.canonical_id`: `17850` and `" 17850"` are `"17850"`), each
    once, in the order met."""
    found: dict[str, None] = {}
    stack: list[tuple[Any, int]] = [(payload, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > _MAX_DEPTH:
            continue
        if isinstance(value, dict):
            try:
                uid = canonical_id(value.get("user_id"))
            except ValueError:  # an integer past Python's digit limit: not an id
                uid = None
            if isinstance(uid, str) and uid:
                found.setdefault(uid)
            stack.extend((v, depth + 1) for v in reversed(list(value.values())))
        elif isinstance(value, list | tuple):
            stack.extend((v, depth + 1) for v in reversed(value))
    return list(found)


def stream_fields(payload: Any) -> dict[str, str]:
    """The fields that keep `payload` in a stream entry: `payload`, the JSON of
    `redact(payload)` cut to `PAYLOAD_MAX_CHARS` (and then `truncated`, its length), and
    `users`, the JSON list of `shoppers_in(payload)` (taken before the cut), which
    erasure matches exactly. The writer adds its own fields (task, code, reason, time)."""
    text = storable_json(redact(payload))
    return {
        PAYLOAD_FIELD: text[:PAYLOAD_MAX_CHARS],
        USERS_FIELD: storable_json(shoppers_in(payload)),
        **({TRUNCATED_FIELD: str(len(text))} if len(text) > PAYLOAD_MAX_CHARS else {}),
    }


def storable_json(value: Any) -> str:
    """`value` as JSON text that Redis can store as UTF-8, whatever it holds: non-ASCII
    kept as is, unless it has lone surrogates (valid JSON, not UTF-8), which are then
    escaped (`\\ud800`), so the text still reads back to the same value. Never raises."""
    try:
        text = json.dumps(value, default=repr, ensure_ascii=False)
    except (TypeError, ValueError):  # circular, or an int past Python's digit limit
        return json.dumps(f"<not JSON: {type(value).__name__}>")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, default=repr, ensure_ascii=True)
    return text


def names_shopper(fields: dict[str, str], user_id: str) -> bool:
    """Whether a stream entry written with `stream_fields` names shopper `user_id` (as
    stored: `contract.canonical_id`). Entries written before the `users` field existed
    are matched on their payload: parsed when it is whole JSON, else by the id's JSON
    text in either encoding."""
    if USERS_FIELD in fields:
        return user_id in json.loads(fields[USERS_FIELD])
    text = fields.get(PAYLOAD_FIELD, "")
    try:
        return user_id in shoppers_in(json.loads(text))
    except ValueError:  # truncated
        spelled = {json.dumps(user_id), json.dumps(user_id, ensure_ascii=False)}
        if user_id.isdigit():
            spelled.add(user_id)
        return any(f'"user_id": {s}' in text or f'"user_id":{s}' in text for s in spelled)


_QUOTED = re.compile(r"b?'[^']*'|b?\"[^\"]*\"")


def without_quoted(text: str) -> str:
    """`text` (an exception's message about some input) with every quoted value replaced
    by `'…'`: libraries quote the value they could not read, and that value may be a
    token or an id."""
    return _QUOTED.sub("'…'", text)
