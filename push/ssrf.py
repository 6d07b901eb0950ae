"""The SSRF guard for webhook destinations.

A destination is acceptable when:

* its host is on the allowlist (then ``http://`` is allowed too, and no address check), or
* its scheme is ``https`` and *every* address its host resolves to is globally routable:
  not loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7), link-local
  (169.254/16, fe80::/10, which holds the cloud metadata address), CGNAT, multicast,
  reserved or unspecified; IPv4-mapped IPv6 addresses are judged by their IPv4 part.

The check runs twice: before the request (`check_destination`, a clear error) and again
at connect time inside the transport (`guarded_client`), on the very addresses the
socket connects to, so a DNS answer that changes in between (rebinding) is caught.
Redirects are never followed; timeouts are bounded.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Collection, Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from push.errors import UnsafeDestinationError
from push.http import ssl_context
from push.redact import install_log_redaction

__all__ = ["GuardedNetworkBackend", "check_destination", "forbidden_address", "guarded_client"]

_METADATA = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("fd00:ec2::254"),
    ipaddress.ip_address("100.100.100.200"),
    ipaddress.ip_address("168.63.129.16"),
}

WEBHOOK_TIMEOUT = httpx.Timeout(connect=5.0, read=15.0, write=10.0, pool=10.0)


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


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses `forbidden_address` accepts (unless allowlisted)."""

    def __init__(self, allowed_hosts: Iterable[str]) -> None:
        self._allowed = frozenset(allowed_hosts)
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if _allowed(host, self._allowed):
            return await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        try:
            addresses = await _resolve(host, port)
        except UnsafeDestinationError as exc:
            raise httpcore.ConnectError(f"unsafe destination: {exc}") from exc
        for address in addresses:
            why = forbidden_address(address)
            if why:
                raise httpcore.ConnectError(f"unsafe destination: {why}")
        # Connect to the address just checked, not to a fresh resolution of the name;
        # TLS still verifies the certificate against the host name (SNI from the URL).
        return await self._inner.connect_tcp(
            addresses[0], port, timeout, local_address, socket_options
        )

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unsafe destination: unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(
        self,
        *,
        allowed_hosts: Iterable[str],
        context: ssl.SSLContext,
        http2: bool,
        limits: httpx.Limits,
    ) -> None:
        super().__init__(verify=context, http1=True, http2=http2, limits=limits)
        # httpx does not expose httpcore's network backend; swap the pool it built for an
        # identical one that connects through the guard (httpx is pinned < 1).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=http2,
            network_backend=GuardedNetworkBackend(allowed_hosts),
        )


def guarded_client(
    allowed_hosts: Iterable[str] = (),
    *,
    ca_bundle: str | None = None,
    http2: bool = False,
    max_connections: int = 100,
) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` for webhooks: guarded connects, no redirects, bounded timeouts.

    HTTP/1.1 by default (webhook receivers are ordinary web servers); ``http2=True``
    negotiates HTTP/2 by ALPN where the receiver offers it.
    """
    install_log_redaction()
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=32)
    transport = _GuardedTransport(
        allowed_hosts=allowed_hosts, context=ssl_context(ca_bundle), http2=http2, limits=limits
    )
    return httpx.AsyncClient(
        transport=transport, timeout=WEBHOOK_TIMEOUT, follow_redirects=False, trust_env=False
    )
