"""HTTP clients whose every new connection passes the destination guard (`push.ssrf`).

The check happens where the socket is opened, on the addresses the guard resolved, and
the client connects to exactly those addresses, so a DNS answer that changes after an
earlier check (rebinding) is caught. Refusals surface from the client call as
`UnsafeDestinationError` (permanent) and `DestinationLookupError` (retry), raised as
they are, not wrapped by the client library:

* `guarded_session`: aiohttp, HTTP/1.1 (webhooks; chosen by bench/push.py).
* `guarded_client`: httpx, HTTP/2 (Web Push endpoints).

Each caller also checks the URL itself first (`DestinationGuard.check_url`): the
connection layer sees host and port only, not the scheme.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from pathlib import Path

import aiohttp
import httpcore
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult

from push.http import DEFAULT_TIMEOUT, make_client, ssl_context
from push.ssrf import DestinationGuard

__all__ = [
    "WEBHOOK_TIMEOUT",
    "GuardedNetworkBackend",
    "GuardedResolver",
    "guarded_client",
    "guarded_session",
]

WEBHOOK_TIMEOUT = aiohttp.ClientTimeout(total=30.0, connect=5.0, sock_read=15.0)
"""Standard Webhooks suggests 15-30 s for the receiver to answer."""

_NUMERIC = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver answering with the guard's checked addresses.

    aiohttp never asks the resolver about IP literals; the callers' `check_url` judges
    those (and aiohttp refuses non-canonical IPv4 spellings itself)."""

    def __init__(self, guard: DestinationGuard) -> None:
        self._guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=resolved.address,
                port=port,
                family=resolved.family,
                proto=0,
                flags=_NUMERIC,
            )
            for resolved in await self._guard.lookup(host, port)
            if family in (socket.AF_UNSPEC, resolved.family)
        ]

    async def close(self) -> None:
        pass


def guarded_session(
    guard: DestinationGuard,
    *,
    ca_bundle: Path | str | None = None,
    max_connections: int = 100,
    timeout: aiohttp.ClientTimeout = WEBHOOK_TIMEOUT,
) -> aiohttp.ClientSession:
    """The webhook client: an `aiohttp.ClientSession` whose connects pass `guard`.

    HTTP/1.1 with keep-alive; chosen over httpx for webhooks by bench/push.py (httpx's
    HTTP/1.1 pool degrades sharply at 64 requests in flight). Create it inside a running
    event loop; the caller closes it (``await session.close()``). Pass
    ``allow_redirects=False`` on every request (`WebhookGateway` does).
    """
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(guard),
        ssl=ssl_context(ca_bundle),
        limit=max_connections,
        keepalive_timeout=4.0,  # below common 5 s server idle timeouts: no stale reuse
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        trust_env=False,
        auto_decompress=False,
        headers={"user-agent": "pushrec-push/0.1"},
    )


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses the guard allowed.

    TLS still verifies the certificate against the URL's host name (httpcore passes it
    as SNI); only the TCP connect goes to the checked address. Addresses are tried in
    the resolver's order."""

    def __init__(
        self, guard: DestinationGuard, inner: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self._guard = guard
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._guard.lookup(host, port)
        last: httpcore.ConnectError | None = None
        for resolved in addresses:
            try:
                return await self._inner.connect_tcp(
                    resolved.address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                last = exc
        assert last is not None  # lookup never answers with no address
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are no push destination")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_client(
    guard: DestinationGuard,
    *,
    ca_bundle: Path | str | None = None,
    max_connections: int = 100,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
) -> httpx.AsyncClient:
    """`push.http.make_client` whose connections pass `guard` (Web Push endpoints).
    The caller closes it."""
    return make_client(
        ca_bundle=ca_bundle,
        max_connections=max_connections,
        timeout=timeout,
        network_backend=GuardedNetworkBackend(guard),
    )
