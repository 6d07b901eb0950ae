"""The SSRF guard for webhook destinations.

A destination is acceptable when:

* its host is on the allowlist (then ``http://`` is allowed too, and no address check), or
* its scheme is ``https`` and *every* address its host resolves to is globally routable:
  not loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7), link-local
  (169.254/16, fe80::/10, which holds the cloud metadata address), CGNAT, multicast,
  reserved or unspecified; IPv4-mapped IPv6 addresses are judged by their IPv4 part.

The check runs twice: before the request (`check_destination`, a clear error) and again
at connect time in the client's resolver (`guarded_session`), on the very addresses
the socket connects to, so a DNS answer that changes in between (rebinding) is caught.
Redirects are never followed; timeouts are bounded.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Collection, Iterable
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from push.errors import UnsafeDestinationError
from push.http import ssl_context

__all__ = [
    "WEBHOOK_TIMEOUT",
    "GuardedResolver",
    "UnsafeAddressError",
    "check_destination",
    "forbidden_address",
    "guarded_session",
]

_METADATA = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("fd00:ec2::254"),
    ipaddress.ip_address("100.100.100.200"),
    ipaddress.ip_address("168.63.129.16"),
}

WEBHOOK_TIMEOUT = aiohttp.ClientTimeout(total=30.0, connect=5.0, sock_read=15.0)
"""Standard Webhooks suggests 15-30 s for the receiver to answer."""


def forbidden_address(address: str) -> str | None:
    """Why `address` (an IP literal) must not be contacted, or None when it may."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in _METADATA:
        return "metadata address"
    if ip.is_loopback:
        return "loopback address"
    if ip.is_link_local:
        return "link-local address"
    if ip.is_private:
        return "private address"
    if ip.is_multicast or ip.is_reserved or ip.is_unspecified or not ip.is_global:
        return "non-global address"
    return None


def _allowed(host: str, allowed_hosts: Collection[str]) -> bool:
    return host.lower().rstrip(".") in {h.lower().rstrip(".") for h in allowed_hosts}


async def _resolve(host: str, port: int) -> list[str]:
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UnsafeDestinationError(f"cannot resolve webhook host: {exc.strerror}") from exc
    return [str(info[4][0]) for info in infos]


async def check_destination(url: str, allowed_hosts: Collection[str]) -> None:
    """Raise `UnsafeDestinationError` unless `url` may be posted to (see module doc)."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host or parts.scheme not in {"http", "https"}:
        raise UnsafeDestinationError("webhook URL must be an absolute http(s) URL")
    if _allowed(host, allowed_hosts):
        return
    if parts.scheme != "https":
        raise UnsafeDestinationError("webhook URL must use https (host not allowlisted)")
    port = parts.port or 443
    for address in await _resolve(host, port):
        why = forbidden_address(address)
        if why:
            raise UnsafeDestinationError(f"webhook host resolves to a {why}")


class UnsafeAddressError(OSError):
    """Raised inside the connector (aiohttp wraps it as `ClientConnectorError.os_error`)."""


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver with the guard applied to every answer (connect-time check).

    aiohttp never asks the resolver about IP literals; `check_destination` covers them
    before each request."""

    def __init__(self, allowed_hosts: Iterable[str]) -> None:
        self._allowed = frozenset(allowed_hosts)
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if _allowed(host, self._allowed):
            return results
        for result in results:
            why = forbidden_address(result["host"])
            if why:
                raise UnsafeAddressError(f"unsafe destination: {host} resolves to a {why}")
        return results

    async def close(self) -> None:
        await self._inner.close()


def guarded_session(
    allowed_hosts: Iterable[str] = (),
    *,
    ca_bundle: Path | str | None = None,
    max_connections: int = 100,
    timeout: aiohttp.ClientTimeout = WEBHOOK_TIMEOUT,
) -> aiohttp.ClientSession:
    """The webhook client: an `aiohttp.ClientSession` whose connects pass the guard.

    HTTP/1.1 with keep-alive; chosen over httpx for webhooks by bench/push.py (httpx's
    HTTP/1.1 pool degrades sharply at 64 requests in flight). Create it inside a running
    event loop; the caller closes it (``await session.close()``). Pass
    ``allow_redirects=False`` on every request (`WebhookGateway` does).
    """
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(allowed_hosts),
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
