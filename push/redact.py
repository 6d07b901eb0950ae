"""Tokens, endpoints and secrets never reach logs in clear: log `fingerprint(value)`.

A fingerprint is a short keyed-free SHA-256 prefix: stable (the same token always maps to
the same string, so logs can be correlated) and not reversible for high-entropy values.
"""

from __future__ import annotations

import hashlib
import logging
from urllib.parse import urlsplit

__all__ = ["fingerprint", "install_log_redaction", "safe_url"]


def fingerprint(value: str | bytes) -> str:
    """``"h:" + 12 hex chars`` of SHA-256(value)."""
    data = value.encode() if isinstance(value, str) else value
    return "h:" + hashlib.sha256(data).hexdigest()[:12]


def safe_url(url: str) -> str:
    """Scheme and host of `url` plus the fingerprint of the rest (paths hold tokens)."""
    parts = urlsplit(url)
    rest = url[len(f"{parts.scheme}://{parts.netloc}") :]
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/{fingerprint(rest)}"


class _RedactHttpxRequests(logging.Filter):
    """httpx logs ``HTTP Request: POST <url> "HTTP/2 200 OK"`` at INFO: the URL holds
    device tokens (APNs), subscription ids (Web Push) and webhook paths."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 2:
            args = list(record.args)
            args[1] = safe_url(str(args[1]))
            record.args = tuple(args)
        return True


class _DropRecords(logging.Filter):
    """hpack logs every header it encodes (the authorization header among them) at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


def install_log_redaction() -> None:
    """Make the HTTP stack's own logging safe: redact URLs in httpx's request log and
    silence hpack's header dumps. Idempotent; called by every client factory in `push`
    (call it yourself if you build an `httpx.AsyncClient` another way)."""
    targets: list[tuple[str, type[logging.Filter]]] = [
        ("httpx", _RedactHttpxRequests),
        ("hpack.hpack", _DropRecords),
        ("hpack.table", _DropRecords),
    ]
    for name, kind in targets:
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())
