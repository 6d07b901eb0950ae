"""The HTTP client whose every new connection passes the destination guard (`push.ssrf`),
for the URLs that come from input: Web Push endpoints and webhook URLs.

`guarded_session` is `push.http.make_session` (aiohttp, HTTP/1.1) with a resolver that
answers with the guard's checked addresses, so the check happens where the socket is
opened and the session connects to exactly those addresses: a DNS answer that changes
after an earlier check (rebinding) is caught. Refusals surface from the request as
`UnsafeDestinationError` (permanent) and `DestinationLookupError` (retry), raised as
they are, not wrapped by aiohttp.

Each caller also checks the URL itself first (`DestinationGuard.check_url`): the
resolver sees host and port only, not the scheme, and is never asked about IP literals.
"""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from push.http import DEFAULT_SESSION_TIMEOUT, make_session
from push.ssrf import DestinationGuard

__all__ = ["WEBHOOK_TIMEOUT", "GuardedResolver", "guarded_session"]

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
    timeout: aiohttp.ClientTimeout = DEFAULT_SESSION_TIMEOUT,
) -> aiohttp.ClientSession:
    """`push.http.make_session` whose connects pass `guard`: Web Push with the default
    `timeout`, webhooks with `WEBHOOK_TIMEOUT`.

    Connections are kept alive 4 s, below common 5 s server idle timeouts, so none is
    reused just as the server closes it. Send with `push.http.fetch` (no redirects).
    Create it inside a running event loop; the caller closes it (``await
    session.close()``).
    """
    return make_session(
        ca_bundle=ca_bundle,
        max_connections=max_connections,
        timeout=timeout,
        keepalive_s=4.0,
        resolver=GuardedResolver(guard),
    )
