"""A lean HTTP/1.1 client for the gateways that speak it (FCM, Web Push, webhooks).

One request per connection at a time over kept-alive connections, pooled per origin,
answers parsed by httptools (Node's llhttp, in C: lengths, chunking, keep-alive rules).
It does what a gateway send needs and nothing else: no redirects, cookies, proxies,
decompression or retries. What a hostile server can make it hold is bounded: an answer's
head (64 KiB, counted as it arrives), its body (`max_body`), interim answers (4), the
time (`H1Timeouts`); the connection (`push.h1_connection`) is closed on any of them.
bench/push.py measured it at under half of aiohttp's client CPU a send (docs/push.md),
the one cost a batch of sends could not share.

Errors (`H1Error` and its kinds, `TimeoutError`) mean no complete answer came; what the
`resolver` raises (the destination guard's refusals) comes through as it is. A request
is never sent twice by the client: a kept-alive connection the server closed just as it
was reused is `ServerDisconnectedError`, which the gateways report as a retry.
"""

from __future__ import annotations

import asyncio
import functools
import re
import socket
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self
from urllib.parse import quote, urlsplit

from push.errors import UnsafeDestinationError
from push.h1_connection import (
    Answer,
    ConnectError,
    Connection,
    H1Error,
    Headers,
    Origin,
    ProtocolError,
    ServerDisconnectedError,
)
from push.ssrf import Resolver, canonical_host, system_resolver

__all__ = [
    "KEEPALIVE_S",
    "MAX_BODY",
    "NO_ANSWER",
    "ConnectError",
    "H1Client",
    "H1Error",
    "H1Timeouts",
    "Headers",
    "ProtocolError",
    "ServerDisconnectedError",
]

KEEPALIVE_S = 15.0
"""How long an idle connection is kept by default."""
MAX_BODY = 1 << 20
"""The largest answer body taken by default, in bytes."""
NO_ANSWER = (H1Error, TimeoutError)
"""What `H1Client.request` raises when no complete answer came (for ``except``)."""

_DEFAULT_PORTS = {"http": 80, "https": 443}
_ADDRESSES_TRIED = 4  # of a name's addresses, in the resolver's order
# Left as they are in a request target: RFC 3986's reserved and unreserved characters and
# '%' (a URL's escapes stay escapes); anything else (space, CR, LF, non-ASCII) is escaped.
_TARGET_SAFE = "/?#[]@!$&'()*+,;=-._~:%"
_NEEDS_ESCAPE = re.compile(r"[^\x21-\x7e]")
_OURS = frozenset({"host", "content-length", "transfer-encoding", "connection", "upgrade"})
# methods whose answer always has a body or a length (HEAD's has neither: llhttp would wait)
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a field name (RFC 9110, 5.6.2)


@dataclass(frozen=True, slots=True)
class H1Timeouts:
    """Seconds: `pool` waiting for a free connection slot, `connect` looking the name up
    and then opening a connection to each address tried (TLS included), `read` from
    sending the request to the last byte of the answer."""

    pool: float = 10.0
    connect: float = 5.0
    read: float = 10.0


@dataclass(frozen=True, slots=True)
class _Origin:
    key: Origin  # scheme, host (canonical), port
    host_header: str


@functools.lru_cache(maxsize=1024)
def _origin(scheme: str, netloc: str) -> _Origin:
    parts = urlsplit(f"{scheme}://{netloc}")
    scheme = scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"not an absolute http(s) URL: {scheme}://{netloc}")
    host = canonical_host(parts.hostname)
    port = parts.port or _DEFAULT_PORTS[scheme]
    shown = f"[{host}]" if ":" in host else host
    if port != _DEFAULT_PORTS[scheme]:
        shown = f"{shown}:{port}"
    return _Origin((scheme, host, port), shown)


def _target(url: str) -> tuple[_Origin, str]:
    """The origin to connect to and the request target (path and query, escaped)."""
    parts = urlsplit(url)
    try:
        origin = _origin(parts.scheme, parts.netloc)
    except UnsafeDestinationError as exc:
        raise ValueError(f"cannot send to {url!r}: {exc}") from None
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    if _NEEDS_ESCAPE.search(path):
        path = quote(path, safe=_TARGET_SAFE)
    return origin, path


@functools.lru_cache(maxsize=256)
def _field_name(name: str) -> str:
    """`name` lowercased; ValueError if it is no token (RFC 9110, 5.6.2) or names a
    field the client writes itself (the framing and the host are ours)."""
    lowered = name.lower()
    if _TOKEN.fullmatch(name) is None or lowered in _OURS:
        raise ValueError(f"header {name!r} cannot be sent: not a token, or the client's own")
    return lowered


def _head(
    method: str,
    origin: _Origin,
    path: str,
    headers: Mapping[str, str],
    length: int,
    user_agent: str | None,
) -> bytes:
    names = [_field_name(name) for name in headers]
    if method not in _METHODS:
        raise ValueError(f"method {method!r} is not one the client sends")
    fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    # One line per field: a CR or LF inside a value would add a line (injection).
    lines = len(headers)
    if fields.count("\n") != lines or fields.count("\r") != lines or "\0" in fields:
        raise ValueError(f"a value of {sorted(headers)} holds a forbidden character")
    if user_agent and "user-agent" not in names:
        fields += f"user-agent: {user_agent}\r\n"  # the client's own: checked once
    return (
        f"{method} {path} HTTP/1.1\r\nhost: {origin.host_header}\r\n{fields}"
        f"content-length: {length}\r\n\r\n"
    ).encode("latin-1")


class H1Client:
    """Kept-alive HTTP/1.1 connections, at most `max_connections` open in all.

    `ssl_context` verifies ``https`` origins; `resolver` answers name lookups (the
    system's by default; the destination guard's for URLs from input, so every connect
    goes to an address it checked). A connection idle `keepalive_s` is closed. Answers
    over `max_body` bytes fail the request. `user_agent` is sent unless the request
    names one. Use inside one event loop; close it when done (``async with`` or
    `aclose`).
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        max_connections: int = 100,
        keepalive_s: float = KEEPALIVE_S,
        timeouts: H1Timeouts = H1Timeouts(),
        resolver: Resolver = system_resolver,
        user_agent: str | None = None,
        max_body: int = MAX_BODY,
    ) -> None:
        self._ssl = ssl_context
        self._max = max_connections
        self._keepalive_s = keepalive_s
        self.timeouts = timeouts
        self._resolver = resolver
        self._agent = user_agent
        self._max_body = max_body
        self._idle: dict[Origin, list[Connection]] = {}
        self._open = 0  # connections open or opening, idle ones included
        self._connections: set[Connection] = set()  # until their sockets close: `aclose`
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes = b""
    ) -> tuple[int, Headers, bytes]:
        """Send one request and read its whole answer: (status, headers, body).

        Raises `H1Error` or `TimeoutError` when no complete answer came, `ValueError`
        for a URL or header that cannot be sent."""
        origin, path = _target(url)
        head = _head(method, origin, path, headers, len(body), self._agent)
        connection = await self._acquire(origin.key)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Answer] = loop.create_future()
        timer = loop.call_later(self.timeouts.read, _time_out, waiter)
        reusable = False
        try:
            connection.send(head + body, waiter)
            answer = await waiter
            reusable = answer.keep_alive
            return answer.status, answer.headers, answer.body
        finally:
            timer.cancel()
            self._release(connection, reusable=reusable)

    async def aclose(self) -> None:
        """Close every connection, idle or busy (a request in flight fails), and wait
        (up to a second) until their sockets are closed: a loop closed right after
        must not find them open."""
        self._closed = True
        for waiter in self._slot_waiters:
            if not waiter.done():
                waiter.set_exception(H1Error("the client is closed"))
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._idle.clear()
        closing = list(self._connections)  # each leaves the set when its socket closes
        for connection in closing:
            connection.close()
        if closing:
            await asyncio.wait([c.lost for c in closing], timeout=1.0)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _acquire(self, origin: Origin) -> Connection:
        if self._closed:
            raise H1Error("the client is closed")
        deadline: float | None = None
        while True:
            connection = self._take_idle(origin)
            if connection is not None:
                return connection
            if self._open < self._max or self._close_an_idle():
                break
            loop = asyncio.get_running_loop()
            deadline = deadline or loop.time() + self.timeouts.pool
            waiter: asyncio.Future[None] = loop.create_future()
            self._slot_waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._wake_one()  # woken, then timed out or cancelled: pass it on
                raise
            finally:
                if waiter in self._slot_waiters:
                    self._slot_waiters.remove(waiter)
        self._open += 1
        try:
            connection = await self._connect(origin)
        except BaseException:
            self._forget()
            raise
        if self._closed:  # closed while this one was connecting
            self._discard(connection)
            raise H1Error("the client is closed")
        return connection

    def _take_idle(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        stale = asyncio.get_running_loop().time() - self._keepalive_s
        found = None
        while idle and found is None:
            connection = idle.pop()  # the most recently used: least likely closed by now
            if not connection.closed and connection.idle_since > stale:
                found = connection
            else:
                self._discard(connection)
        if not idle:
            del self._idle[origin]  # origins come from input: keep none without connections
        return found

    async def _connect(self, origin: Origin) -> Connection:
        """A new connection to `origin`: the name looked up, then up to four of its
        addresses tried, each with the `connect` time (one that swallows packets, an IPv6
        route that leads nowhere, must not use up the next one's), the whole within
        twice that."""
        scheme, host, port = origin
        tls = self._ssl if scheme == "https" else None
        loop = asyncio.get_running_loop()
        failures: list[str] = []
        async with asyncio.timeout(2 * self.timeouts.connect):
            try:
                addresses = await self._resolver(host, port)
            except OSError as exc:  # the system's lookup (the guard raises its own errors)
                raise ConnectError(f"cannot look up {host}: {exc}") from exc
            for resolved in addresses[:_ADDRESSES_TRIED]:
                try:
                    async with asyncio.timeout(self.timeouts.connect):
                        _, connection = await loop.create_connection(
                            lambda: Connection(origin, self._max_body, self._connections.discard),
                            resolved.address,
                            port,
                            family=resolved.family,
                            flags=socket.AI_NUMERICHOST,  # the address as resolved, no new lookup
                            ssl=tls,
                            server_hostname=host if tls else None,
                        )
                except (OSError, ssl.SSLError) as exc:  # TimeoutError is an OSError
                    failures.append(f"{resolved.address}: {str(exc) or type(exc).__name__}")
                    continue
                self._connections.add(connection)
                return connection
        raise ConnectError(f"cannot connect to {host}:{port} ({'; '.join(failures)})")

    def _release(self, connection: Connection, *, reusable: bool) -> None:
        if reusable and not connection.closed and not self._closed:
            loop = asyncio.get_running_loop()
            connection.idle_since = loop.time()
            self._idle.setdefault(connection.origin, []).append(connection)
            if self._sweeper is None:
                self._sweeper = loop.call_later(self._keepalive_s, self._sweep)
            self._wake_one()
            return
        self._discard(connection)

    def _sweep(self) -> None:
        """Close the connections idle `keepalive_s` or more (one timer for all, not one
        a request); again while any stay idle."""
        loop = asyncio.get_running_loop()
        stale = loop.time() - self._keepalive_s
        oldest = None
        for origin, idle in list(self._idle.items()):
            while idle and (idle[0].idle_since <= stale or idle[0].closed):
                self._discard(idle.pop(0))  # the list runs from the longest idle
            if idle:
                since = idle[0].idle_since
                oldest = since if oldest is None else min(oldest, since)
            else:
                del self._idle[origin]
        self._sweeper = None
        if oldest is not None:
            self._sweeper = loop.call_at(oldest + self._keepalive_s, self._sweep)

    def _close_an_idle(self) -> bool:
        """Make room for another origin's connection by closing an idle one."""
        for origin, idle in self._idle.items():
            connection = idle.pop(0)  # the longest idle (no list is kept empty)
            if not idle:
                del self._idle[origin]
            connection.close()
            self._open -= 1  # the caller takes the slot: no waiter to wake
            return True
        return False

    def _discard(self, connection: Connection) -> None:
        connection.close()
        self._forget()

    def _forget(self) -> None:
        """A connection slot is free (its connection closed, or never opened)."""
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def _time_out(waiter: asyncio.Future[Answer]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no complete answer in time"))
