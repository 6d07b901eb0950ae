"""HTTP plumbing shared by the gateways: the client factory, Retry-After parsing and the
translation of httpx transport errors into `DeliveryResult`s (the edge where httpx's
exceptions stop).

One `httpx.AsyncClient` per process, created here and injected into every gateway; the
caller owns it and closes it (`await client.aclose()`) at shutdown.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpcore
import httpx

from push.redact import install_log_redaction
from push.result import DeliveryResult

__all__ = [
    "DEFAULT_TIMEOUT",
    "HttpRequest",
    "make_client",
    "parse_retry_after",
    "ssl_context",
    "transport_failure",
]

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=10.0, write=10.0, pool=10.0)
"""Bounded everywhere: a stuck gateway costs at most ~25 s of one slot."""


_DEFAULT_HEADERS = {"user-agent": "pushrec-push/0.1"}


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """What a pure builder produces: everything needed to send, nothing sent."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def to_httpx(self, client: httpx.AsyncClient) -> httpx.Request:
        """An `httpx.Request` for ``client.send()`` carrying the client's timeouts.

        Client default headers and cookies are not merged in (cheaper per request), so
        the builders set every header the service needs."""
        return httpx.Request(
            self.method,
            self.url,
            headers={**_DEFAULT_HEADERS, **self.headers},
            content=self.body,
            extensions={"timeout": client.timeout.as_dict()},
        )


def ssl_context(ca_bundle: Path | str | None = None) -> ssl.SSLContext:
    """The system trust store, plus `ca_bundle` (an extra PEM file) when given."""
    context = ssl.create_default_context()
    if ca_bundle:
        context.load_verify_locations(cafile=str(ca_bundle))
    return context


def _transport(
    *,
    verify: ssl.SSLContext,
    http1: bool,
    limits: httpx.Limits,
    network_backend: httpcore.AsyncNetworkBackend | None,
) -> httpx.AsyncHTTPTransport:
    transport = httpx.AsyncHTTPTransport(verify=verify, http1=http1, http2=True, limits=limits)
    if network_backend is not None:
        # httpx takes no network backend: give the transport a pool like its own that
        # connects through `network_backend` (tests/push/test_guarded_http.py checks it)
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=verify,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=http1,
            http2=True,
            network_backend=network_backend,
        )
    return transport


def make_client(
    *,
    ca_bundle: Path | str | None = None,
    h2c: bool = True,
    max_connections: int = 100,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    network_backend: httpcore.AsyncNetworkBackend | None = None,
) -> httpx.AsyncClient:
    """The process's `httpx.AsyncClient` for FCM, APNs and Web Push.

    ``https://`` URLs negotiate HTTP/2 by ALPN (falling back to HTTP/1.1 only if the
    server offers nothing else). ``http://`` URLs — local gateways only — speak HTTP/2
    with prior knowledge (h2c) when `h2c`, else HTTP/1.1. Redirects are never followed;
    timeouts are bounded; proxies from the environment are ignored. `network_backend`
    opens the TCP connections when given (`push.guarded_http.guarded_client` passes the
    destination guard's). The caller closes it.
    """
    install_log_redaction()
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=20)
    verify = ssl_context(ca_bundle)
    mounts: dict[str, httpx.AsyncBaseTransport | None] = {
        "https://": _transport(
            verify=verify, http1=True, limits=limits, network_backend=network_backend
        ),
        "http://": _transport(
            verify=verify, http1=not h2c, limits=limits, network_backend=network_backend
        ),
    }
    return httpx.AsyncClient(
        mounts=mounts, timeout=timeout, follow_redirects=False, trust_env=False
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def transport_failure(exc: httpx.HTTPError, message_id: str, channel: str) -> DeliveryResult:
    """A request that got no HTTP answer: always transient."""
    if isinstance(exc, httpx.TimeoutException):
        return DeliveryResult.retry(message_id, channel, f"{channel}:timeout")
    return DeliveryResult.retry(message_id, channel, f"{channel}:network:{type(exc).__name__}")
