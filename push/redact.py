"""Tokens, endpoints and secrets never reach logs in clear: log `fingerprint(value)`.

A fingerprint is a short keyed-free SHA-256 prefix: stable (the same token always maps to
the same string, so logs can be correlated) and not reversible for high-entropy values.
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

__all__ = ["fingerprint", "safe_url"]


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
