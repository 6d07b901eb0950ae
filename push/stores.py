"""Small store Protocols for state that all sending processes must share, with in-memory
implementations for one process and tests. The worker implements them on Redis.

Each method names the atomicity it needs; every one maps to a single Redis command, a
MULTI, or a short Lua script. Times are Unix seconds (float) passed in by the caller,
so stores hold no clocks and tests need no sleeping. Keys are opaque strings built from
fingerprints (`Gateway.route_key`); they never contain secrets. Implementations should
prefix them and let them expire (TTLs are given).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = [
    "BreakerStore",
    "FileTokenCache",
    "MemoryBreakerStore",
    "MemoryRateLimitStore",
    "MemoryTokenCache",
    "RateLimitStore",
    "TokenCache",
]


class TokenCache(Protocol):
    """Shared provider tokens (the APNs JWT): one live token per credential for everyone.

    Redis: `get` = GET; `add` = ``SET key token NX EX ttl`` then GET (or one Lua script /
    ``SET ... NX GET`` on Redis >= 7) so concurrent minters all end up using the winner;
    `discard` = compare-and-delete in Lua (``if GET == token then DEL``).
    """

    async def get(self, key: str) -> str | None: ...

    async def add(self, key: str, token: str, ttl_s: float) -> str:
        """Store `token` for `ttl_s` unless a token is present; return the stored one."""
        ...

    async def discard(self, key: str, token: str) -> None:
        """Delete the entry only if it still holds `token` (another process may have
        replaced it already)."""
        ...


class BreakerStore(Protocol):
    """Circuit-breaker state per route key.

    Redis: `open_until` = GET; `add_failure` = MULTI{INCR, EXPIRE NX window}; `trip` =
    SET until (expiring a little after it) + DEL failures in one MULTI; `claim_probe` =
    ``SET probe 1 NX PX ttl`` (exactly one caller wins per ttl); `reset` = DEL all three.
    """

    async def open_until(self, key: str) -> float:
        """When the open breaker may be probed; 0.0 when closed."""
        ...

    async def add_failure(self, key: str, *, window_s: float) -> int:
        """Count one failure in the current window (the counter expires `window_s` after
        its first failure); return the count so far. Must be atomic."""
        ...

    async def trip(self, key: str, until: float) -> None:
        """Open the breaker until `until` and clear the failure count."""
        ...

    async def claim_probe(self, key: str, *, ttl_s: float) -> bool:
        """True for exactly one caller per `ttl_s`: that caller sends the half-open probe."""
        ...

    async def reset(self, key: str) -> None:
        """Close the breaker: forget open-until, failures and probe claim."""
        ...


class RateLimitStore(Protocol):
    """Token buckets per route key.

    Redis: one Lua script over a hash {tokens, ts}: refill by elapsed x rate up to burst,
    take the whole tokens asked for that are there (``1 - 1e-4`` counts as one: Unix times
    near 2e9 lose precision), write back, PEXPIRE to the time a full refill takes.
    """

    async def take(
        self, key: str, *, rate: float, burst: float, now: float, most: int = 1
    ) -> tuple[int, float]:
        """Atomically refill, then take up to `most` whole tokens: ``(taken, 0.0)``, or
        ``(0, seconds until one will be available)`` when none is there."""
        ...


class FileTokenCache:
    """A `TokenCache` in a directory, shared by the processes of one machine (the CLI:
    each ``pushrec send`` is a new process, and APNs refuses a new provider token more
    often than every 20 minutes). `add` is create-exclusive via a hard link, `discard`
    compares before unlinking; entries hold their own expiry. Files are 0600."""

    def __init__(self, directory: Path | str) -> None:
        self._dir = Path(directory)

    def _path(self, key: str) -> Path:
        return self._dir / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")

    def _read(self, path: Path) -> tuple[str, float] | None:
        try:
            entry = json.loads(path.read_text())
            return str(entry["token"]), float(entry["expires"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    async def get(self, key: str) -> str | None:
        entry = self._read(self._path(key))
        if entry is None or entry[1] <= time.time():
            return None
        return entry[0]

    async def add(self, key: str, token: str, ttl_s: float) -> str:
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(key)
        for _ in range(2):
            current = await self.get(key)
            if current is not None:
                return current
            path.unlink(missing_ok=True)  # expired or unreadable
            fd, tmp = tempfile.mkstemp(dir=self._dir, suffix=".tmp")
            with os.fdopen(fd, "w") as handle:
                json.dump({"token": token, "expires": time.time() + ttl_s}, handle)
            try:
                os.link(tmp, path)  # fails if another process won the race
                return token
            except FileExistsError:
                continue
            finally:
                os.unlink(tmp)
        return await self.get(key) or token

    async def discard(self, key: str, token: str) -> None:
        path = self._path(key)
        entry = self._read(path)
        if entry is not None and entry[0] == token:
            path.unlink(missing_ok=True)


# --- in-memory implementations (one process; asyncio-safe: no awaits inside updates) ---


class MemoryTokenCache:
    def __init__(self) -> None:
        self._items: dict[str, tuple[str, float]] = {}

    async def get(self, key: str) -> str | None:
        item = self._items.get(key)
        if item is None or item[1] <= time.monotonic():
            return None
        return item[0]

    async def add(self, key: str, token: str, ttl_s: float) -> str:
        current = await self.get(key)
        if current is not None:
            return current
        self._items[key] = (token, time.monotonic() + ttl_s)
        return token

    async def discard(self, key: str, token: str) -> None:
        item = self._items.get(key)
        if item is not None and item[0] == token:
            del self._items[key]


@dataclass
class _Breaker:
    open_until: float = 0.0
    failures: int = 0
    window_ends: float = 0.0
    probe_until: float = 0.0


class MemoryBreakerStore:
    def __init__(self) -> None:
        self._items: dict[str, _Breaker] = {}

    def _get(self, key: str) -> _Breaker:
        return self._items.setdefault(key, _Breaker())

    async def open_until(self, key: str) -> float:
        return self._get(key).open_until

    async def add_failure(self, key: str, *, window_s: float) -> int:
        state = self._get(key)
        now = time.monotonic()
        if now >= state.window_ends:
            state.failures = 0
            state.window_ends = now + window_s
        state.failures += 1
        return state.failures

    async def trip(self, key: str, until: float) -> None:
        state = self._get(key)
        state.open_until = until
        state.failures = 0
        state.window_ends = 0.0

    async def claim_probe(self, key: str, *, ttl_s: float) -> bool:
        state = self._get(key)
        now = time.monotonic()
        if now < state.probe_until:
            return False
        state.probe_until = now + ttl_s
        return True

    async def reset(self, key: str) -> None:
        self._items.pop(key, None)


class MemoryRateLimitStore:
    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    async def take(
        self, key: str, *, rate: float, burst: float, now: float, most: int = 1
    ) -> tuple[int, float]:
        tokens, at = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + max(0.0, now - at) * rate)
        taken = min(most, math.floor(tokens + 1e-4))  # tolerate float error near 2e9 s
        if taken > 0:
            self._buckets[key] = (max(0.0, tokens - taken), now)
            return taken, 0.0
        self._buckets[key] = (tokens, now)
        return 0, (1.0 - tokens) / rate
