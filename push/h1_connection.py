"""One HTTP/1.1 connection of `push.h1.H1Client`: its socket, its answer parser
(httptools), the client's errors and the answer's header fields.

A connection carries one request at a time. It hands its answer to the waiting request
whole, or fails it: the answer was cut off, malformed, or larger than the client takes.
Anything the server sends that no request asked for spoils the connection (closed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import cast

import httptools

__all__ = [
    "ConnectError",
    "Connection",
    "H1Error",
    "Headers",
    "Origin",
    "ProtocolError",
    "ServerDisconnectedError",
]

Origin = tuple[str, str, int]
"""scheme, host (canonical, ASCII), port"""

MAX_HEAD = 64 * 1024  # bytes of an answer's status line and header fields
MAX_INTERIM = 4  # 1xx answers before the final one


class H1Error(Exception):
    """No complete HTTP answer came (base of the client's own errors)."""


class ConnectError(H1Error):
    """No connection could be opened (name lookup failed, refused, unreachable, TLS
    handshake failed)."""


class ServerDisconnectedError(H1Error):
    """The connection closed before the answer was complete."""


class ProtocolError(H1Error):
    """The answer was not valid HTTP/1.1, or larger than the client accepts."""


class Headers(Mapping[str, str]):
    """An answer's header fields by case-insensitive name; repeats joined by ", " (RFC
    9110, 5.3). Decoded on first use: most answers are read for their status alone."""

    __slots__ = ("_decoded", "_raw")

    def __init__(self, fields: list[tuple[bytes, bytes]]) -> None:
        self._raw = fields
        self._decoded: dict[str, str] | None = None

    @property
    def _fields(self) -> dict[str, str]:
        if self._decoded is None:
            values: dict[str, list[str]] = {}
            for raw_name, raw_value in self._raw:
                name = raw_name.decode("latin-1").lower()
                values.setdefault(name, []).append(raw_value.decode("latin-1"))
            self._decoded = {name: ", ".join(seen) for name, seen in values.items()}
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
class Answer:
    status: int
    headers: Headers
    body: bytes
    keep_alive: bool


class Connection(asyncio.Protocol):
    """One socket and its parser; at most one request in flight (`send`)."""

    def __init__(
        self, origin: Origin, max_body: int, on_lost: Callable[[Connection], None]
    ) -> None:
        self.origin = origin
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None]  # done when the socket is closed (connection_made)
        self.closed = False
        self.idle_since = 0.0  # the loop's time it was last released
        self._max_body = max_body
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._fields: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._head_size = 0  # bytes read while the answer's head is incomplete
        self._headers_done = False
        self._interim = 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.lost = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing asked: a stray or late answer spoils the stream
            self.close()
            return
        if not self._headers_done:
            # counted as it arrives: the parser buffers an unfinished field whole
            self._head_size += len(data)
            if self._head_size > MAX_HEAD:
                self._spoil(ProtocolError(f"answer head over {MAX_HEAD} bytes"))
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # 101: we never ask to switch protocols
            self._spoil(ProtocolError("answer switches protocols, never asked"))
        except httptools.HttpParserError as exc:
            self._spoil(ProtocolError(f"malformed answer: {exc}"))

    def eof_received(self) -> bool | None:
        self.closed = True  # not handed out again while the close is on its way
        return None  # close the transport: a half-closed connection is not reused

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)
        self._on_lost(self)
        # (a close of ours failed its request already: `close`)
        if (
            exc is None
            and self._waiter is not None
            and self._headers_done
            and self._ends_at_close()
        ):
            self._finish(keep_alive=False)
        else:
            self._fail(ServerDisconnectedError("the connection closed before the answer"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self._waiter is None:  # a second answer in one read: the stream is spoiled
            self.close()
        self._fields, self._body, self._size = [], [], 0
        self._headers_done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max_body:
            self._spoil(ProtocolError(f"answer body over {self._max_body} bytes"))
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue, 103): the real one follows
            self._interim += 1
            if self._interim > MAX_INTERIM:
                self._spoil(ProtocolError(f"over {MAX_INTERIM} interim answers"))
            self._fields, self._headers_done, self._head_size = [], False, 0
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
    def send(self, data: bytes, waiter: asyncio.Future[Answer]) -> None:
        assert self.transport is not None
        self._waiter = waiter
        self._head_size = self._interim = 0
        self.transport.write(data)

    def close(self) -> None:
        """Close the socket at once (TLS without its goodbye: nothing is owed) and fail
        the request in flight, if any."""
        self.closed = True
        self._fail(H1Error("the connection was closed by the client"))
        if self.transport is not None:
            self.transport.abort()

    def _spoil(self, exc: Exception) -> None:
        self._fail(exc)
        self.close()

    def _finish(self, *, keep_alive: bool) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            answer = Answer(
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
