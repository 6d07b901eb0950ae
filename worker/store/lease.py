"""A lease in Redis: one holder at a time, renewed while the holder lives.

The scheduler's leadership and the index rebuild each hold one. A holder that dies stops
renewing, and `ttl_s` after its last renewal another process may take the lease; a holder
only renews or releases a lease it still owns (a Lua check of the owner)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from worker.store.client import StateRedis

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaseHeldError(Exception):
    """Another process holds the lease; the message names it."""


class Lease:
    """A Redis lease held by one process at a time (`owner`: host, pid and object)."""

    def __init__(self, client: StateRedis, key: str, ttl_s: float) -> None:
        self._client = client
        self._key = key
        self._ttl_ms = int(ttl_s * 1000)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def acquire(self) -> bool:
        return bool(self._client.set(self._key, self.owner, nx=True, px=self._ttl_ms))

    def renew(self) -> bool:
        return bool(self._renew(keys=[self._key], args=[self.owner, self._ttl_ms]))

    def release(self) -> None:
        self._release(keys=[self._key], args=[self.owner])

    def holder(self) -> str | None:
        """The owner holding the lease now, or None."""
        value = self._client.get(self._key)
        return str(value) if value is not None else None

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lease for a block, renewed from a thread every third of its TTL;
        raises `LeaseHeldError` when another process holds it. A renewal that finds the
        lease lost (this process stalled past the TTL) stops renewing; the block runs on,
        so work under a lease must stay safe to repeat."""
        if not self.acquire():
            raise LeaseHeldError(f"{self._key} is held by {self.holder() or 'another process'}")
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self._ttl_ms / 3000):
                try:
                    if not self.renew():
                        return
                except redis.RedisError:
                    continue  # the next renewal may get through before the lease ends

        thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            with contextlib.suppress(redis.RedisError):  # else it expires by itself
                self.release()
