"""A lean HTTP/1.1 client for the gateways that speak it (FCM, Web Push, webhooks).

One request per connection at a time over kept-alive connections, pooled per origin,
answers parsed by httptools (Node's llhttp, in C: lengths, chunking, keep-alive rules).
It does what a gateway send needs and nothing else: no redirects, cookies, proxies,
decompression or retries, bodies read whole and capped. bench/push.py measured it at
about a third of aiohttp's client CPU a send (docs/push.md), the one cost a batch of
sends could not share.

Errors (`H1Error` and its kinds, `TimeoutError`) mean no complete answer came; what the
`resolver` raises (the destination guard's refusals) comes through as it is. A request
is never sent twice by the client: a kept-alive connection the server closed just as it
was reused is `ServerDisconnectedError`, which the gateways report as a retry.
"""

from __future__ import annotations

import asyncio
import functools
import re
import ssl
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self, cast
from urllib.parse import quote, urlsplit

import httptools

from push.errors import UnsafeDestinationError
from push.ssrf import Resolver, canonical_host, system_resolver

__all__ = [
    "ConnectError",
    "H1Client",
    "H1Error",
    "H1Timeouts",
    "Headers",
    "ProtocolError",
    "ServerDisconnectedError",
]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_ADDRESSES_TRIED = 4  # of a name's addresses, in the resolver's order
_MAX_HEAD = 64 * 1024  # bytes of an answer's header fields
# Left as they are in a request target: RFC 3986's reserved and unreserved characters and
# '%' (a URL's escapes stay escapes); anything else (space, CR, LF, non-ASCII) is escaped.
_TARGET_SAFE = "/?#[]@!$&'()*+,;=-._~:%"
_NEEDS_ESCAPE = re.compile(r"[^\x21-\x7e]")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a field name (RFC 9110, 5.6.2)


class H1Error(Exception):
    """No complete HTTP answer came (base of the client's own errors)."""


class ConnectError(H1Error):
    """No connection could be opened (refused, unreachable, TLS handshake failed)."""


class ServerDisconnectedError(H1Error):
    """The connection closed before the answer was complete."""


class ProtocolError(H1Error):
    """The answer was not valid HTTP/1.1, or larger than the client accepts."""


@dataclass(frozen=True, slots=True)
class H1Timeouts:
    """Seconds: `pool` waiting for a free connection slot, `connect` looking the name up
    and then opening a connection to each address tried (TLS included), `read` from
    sending the request to the last byte of the answer."""

    pool: float = 10.0
    connect: float = 5.0
    read: float = 10.0


class Headers(Mapping[str, str]):
    """An answer's header fields by case-insensitive name; repeats joined by ", ".
    Decoded on first use: most answers are read for their status alone."""

    __slots__ = ("_decoded", "_raw")

    def __init__(self, fields: list[tuple[bytes, bytes]]) -> None:
        self._raw = fields
        self._decoded: dict[str, str] | None = None

    @property
    def _fields(self) -> dict[str, str]:
        if self._decoded is None:
            self._decoded = {}
            for raw_name, raw_value in self._raw:
                name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
                seen = self._decoded.get(name)
                self._decoded[name] = value if seen is None else f"{seen}, {value}"
        return self._decoded

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    headers: Headers
    body: bytes
    keep_alive: bool


class _Connection(asyncio.Protocol):
    """One socket and its parser; at most one request in flight (`waiter`)."""

    def __init__(
        self,
        origin: tuple[str, str, int],
        max_body: int,
        on_lost: Callable[[_Connection], None],
    ) -> None:
        self.origin = origin
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None]  # done when the socket is closed (connection_made)
        self.closed = False
        self.idle_since = 0.0  # the loop's time it was last released
        self._max_body = max_body
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[_Answer] | None = None
        self._fields: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._head_size = 0
        self._headers_done = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.lost = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing asked: a stray or late answer spoils the stream
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"malformed answer: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport: a half-closed connection is not reused

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)
        self._on_lost(self)
        if self._waiter is not None and self._headers_done and self._ends_at_close():
            self._finish(keep_alive=False)
        else:
            self._fail(ServerDisconnectedError("the server closed the connection"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self._waiter is None:  # a second answer in one read: the stream is spoiled
            self.close()
        self._fields, self._body, self._size, self._head_size = [], [], 0, 0
        self._headers_done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value)
        if self._head_size > _MAX_HEAD:
            self._fail(ProtocolError(f"answer header fields over {_MAX_HEAD} bytes"))
            self.close()
            return
        self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max_body:
            self._fail(ProtocolError(f"answer body over {self._max_body} bytes"))
            self.close()
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue, 103): the real one follows
            return
        self._headers_done = False
        self._finish(keep_alive=self._parser.should_keep_alive())

    def _ends_at_close(self) -> bool:
        """Whether the answer has neither a length nor chunks: it ends when the server
        closes (asked only then)."""
        for name, value in self._fields:
            name = name.lower()
            if name == b"content-length" or (
                name == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                return False
        return True

    # the client's side
    def send(self, data: bytes, waiter: asyncio.Future[_Answer]) -> None:
        assert self.transport is not None
        self._waiter = waiter
        self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _finish(self, *, keep_alive: bool) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            answer = _Answer(
                self._parser.get_status_code(),
                Headers(self._fields),
                b"".join(self._body),
                keep_alive,
            )
            waiter.set_result(answer)

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


@dataclass(frozen=True, slots=True)
class _Origin:
    key: tuple[str, str, int]  # scheme, host (canonical), port
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
def _is_token(name: str) -> bool:
    return _TOKEN.fullmatch(name) is not None


def _head(
    method: str, origin: _Origin, path: str, headers: Mapping[str, str], length: int
) -> bytes:
    fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    # One line per field: a CR or LF inside a name or value would add a line (injection).
    lines = len(headers)
    if (
        fields.count("\n") != lines
        or fields.count("\r") != lines
        or "\0" in fields
        or not all(_is_token(name) for name in headers)
    ):
        raise ValueError(f"a header in {sorted(headers)} holds a forbidden character")
    return (
        f"{method} {path} HTTP/1.1\r\nhost: {origin.host_header}\r\n{fields}"
        f"content-length: {length}\r\n\r\n"
    ).encode("latin-1")


class H1Client:
    """Kept-alive HTTP/1.1 connections, at most `max_connections` open in all.

    `ssl_context` verifies ``https`` origins; `resolver` answers name lookups (the
    system's by default; the destination guard's for URLs from input, so every connect
    goes to an address it checked). A connection idle `keepalive_s` is closed. Answers
    over `max_body` bytes fail the request. Use inside one event loop; close it when
    done (``async with`` or `aclose`).
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        max_connections: int = 100,
        keepalive_s: float = 15.0,
        timeouts: H1Timeouts = H1Timeouts(),
        resolver: Resolver = system_resolver,
        user_agent: str = "pushrec-push/0.1",
        max_body: int = 1 << 20,
    ) -> None:
        self._ssl = ssl_context
        self._max = max_connections
        self._keepalive_s = keepalive_s
        self.timeouts = timeouts
        self._resolver = resolver
        self._agent = {"user-agent": user_agent}
        self._max_body = max_body
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open = 0  # connections open or opening, idle ones included
        self._connections: set[_Connection] = set()  # until their sockets close: `aclose`
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
        head = _head(method, origin, path, {**self._agent, **headers}, len(body))
        connection = await self._acquire(origin.key)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[_Answer] = loop.create_future()
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

    async def _acquire(self, origin: tuple[str, str, int]) -> _Connection:
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
            finally:
                if waiter in self._slot_waiters:
                    self._slot_waiters.remove(waiter)
        self._open += 1
        try:
            return await self._connect(origin)
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    def _take_idle(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        stale = asyncio.get_running_loop().time() - self._keepalive_s
        while idle:
            connection = idle.pop()  # the most recently used: least likely closed by now
            if not connection.closed and connection.idle_since > stale:
                return connection
            connection.close()
            self._forget()
        return None

    async def _connect(self, origin: tuple[str, str, int]) -> _Connection:
        scheme, host, port = origin
        tls = self._ssl if scheme == "https" else None
        loop = asyncio.get_running_loop()
        failures: list[str] = []
        async with asyncio.timeout(self.timeouts.connect):
            addresses = await self._resolver(host, port)
        for resolved in addresses[:_ADDRESSES_TRIED]:
            # Each address has its own time: one that swallows packets (an IPv6 route
            # that leads nowhere) must not use up the next one's.
            try:
                async with asyncio.timeout(self.timeouts.connect):
                    _, connection = await loop.create_connection(
                        lambda: _Connection(origin, self._max_body, self._connections.discard),
                        resolved.address,
                        port,
                        family=resolved.family,
                        ssl=tls,
                        server_hostname=host if tls else None,
                    )
            except (OSError, ssl.SSLError) as exc:  # TimeoutError is an OSError
                failures.append(f"{resolved.address}: {str(exc) or type(exc).__name__}")
                continue
            self._connections.add(connection)
            return connection
        raise ConnectError(f"cannot connect to {host}:{port} ({'; '.join(failures)})")

    def _release(self, connection: _Connection, *, reusable: bool) -> None:
        if reusable and not connection.closed and not self._closed:
            loop = asyncio.get_running_loop()
            connection.idle_since = loop.time()
            self._idle.setdefault(connection.origin, []).append(connection)
            if self._sweeper is None:
                self._sweeper = loop.call_later(self._keepalive_s, self._sweep)
            self._wake_one()
            return
        connection.close()
        self._forget()

    def _sweep(self) -> None:
        """Close the connections idle `keepalive_s` or more (one timer for all, not one
        a request); again while any stay idle."""
        loop = asyncio.get_running_loop()
        stale = loop.time() - self._keepalive_s
        oldest = None
        for idle in self._idle.values():
            while idle and (idle[0].idle_since <= stale or idle[0].closed):
                idle.pop(0).close()  # the list runs from the longest idle
                self._forget()
            if idle:
                since = idle[0].idle_since
                oldest = since if oldest is None else min(oldest, since)
        self._sweeper = None
        if oldest is not None:
            self._sweeper = loop.call_at(oldest + self._keepalive_s, self._sweep)

    def _close_an_idle(self) -> bool:
        """Make room for another origin's connection by closing an idle one."""
        for idle in self._idle.values():
            if idle:
                connection = idle.pop(0)  # the longest idle
                connection.close()
                self._open -= 1  # the caller takes the slot: no waiter to wake
                return True
        return False

    def _forget(self) -> None:
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def _time_out(waiter: asyncio.Future[_Answer]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no complete answer in time"))
