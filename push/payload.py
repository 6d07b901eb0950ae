"""Fitting a payload under a channel's byte limit by shortening text, never bytes.

Text is shortened by code points (so a UTF-8 sequence is never cut), trailing combining
marks, joiners and variation selectors are dropped with the cut, and an ellipsis marks it.
The body gives way first, then the title; if the payload still does not fit, the message
is refused with `PayloadTooLargeError` rather than sent broken.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable
from typing import Any

from push.errors import PayloadTooLargeError

__all__ = ["ELLIPSIS", "LIMITS", "compact_json", "fit_payload", "shorten"]

ELLIPSIS = "\u2026"

LIMITS = {"fcm": 4096, "apns": 4096, "webpush": 3993, "webhook": 65_536}
"""Payload byte limits: FCM and APNs 4096; Web Push 3993 bytes of plaintext (one 4096-byte
aes128gcm record minus header, tag and padding delimiter); webhooks our own bound."""

_JOINERS = {"\u200d", "\u200c", "\ufe0e", "\ufe0f"}
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # one, not one a call


def compact_json(value: Any) -> bytes:
    """JSON as the gateways receive it: UTF-8, no spaces, no ASCII escaping (smaller)."""
    return _COMPACT.encode(value).encode()


def shorten(text: str, max_chars: int) -> str:
    """`text` cut to at most `max_chars` code points including a trailing ellipsis."""
    if len(text) <= max_chars:
        return text
    if max_chars <= 0:
        return ""
    cut = text[: max_chars - 1]
    # Do not leave a dangling combining mark, joiner or a base without its accent.
    while cut and (unicodedata.combining(cut[-1]) or cut[-1] in _JOINERS):
        cut = cut[:-1]
    if cut and len(text) > len(cut) and unicodedata.combining(text[len(cut)]):
        cut = cut[:-1]
    return cut.rstrip() + ELLIPSIS


def _longest_fitting(build: Callable[[str], bytes], text: str, limit: int) -> str | None:
    """The longest `shorten(text, n)` for which `build` stays within `limit`, or None."""
    if len(build(text)) <= limit:
        return text
    low, high = 0, len(text) - 1  # invariant: shorten(text, low) fits or low == 0
    if len(build("")) > limit:
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if len(build(shorten(text, middle))) <= limit:
            low = middle
        else:
            high = middle - 1
    return shorten(text, low)


def fit_payload(
    build: Callable[[str, str], bytes], title: str, body: str, *, limit: int, channel: str
) -> bytes:
    """``build(title, body)`` with the text shortened until it is at most `limit` bytes.

    `build` must be pure and grow with its inputs. Raises `PayloadTooLargeError` when even
    an empty title and body do not fit (data, image or link too large).
    """
    payload = build(title, body)
    if len(payload) <= limit:
        return payload
    new_body = _longest_fitting(lambda b: build(title, b), body, limit)
    if new_body is not None:
        return build(title, new_body)
    new_title = _longest_fitting(lambda t: build(t, ""), title, limit)
    if new_title is None:
        raise PayloadTooLargeError(channel, len(build("", "")), limit)
    return build(new_title, "")
