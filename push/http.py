"""HTTP plumbing shared by the gateways: the client factories, sending a built request,
Retry-After parsing and the translation of transport errors into `DeliveryResult`s (the
edge where the clients' exceptions stop).

Two clients, each where bench/push.py measured it cheaper or the service needs it (see
docs/push.md, "Which client for which channel"):

* `make_client`: one `httpx.AsyncClient`, HTTP/2 (APNs accepts nothing else).
* `make_h1_client`: a `push.h1.H1Client`, HTTP/1.1 with keep-alive (FCM; Web Push and
  webhooks through `push.guarded_http.guarded_client`): far less CPU per send than
  httpx's HTTP/2, whose h2 stack is pure Python, or aiohttp's HTTP/1.1.

Each is created once per process (per event loop) and injected into the gateways; the
caller owns and closes it (``await client.aclose()``).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx

from push.h1 import KEEPALIVE_S, MAX_BODY, ConnectError, H1Client, H1Error, H1Timeouts
from push.redact import install_log_redaction
from push.result import DeliveryResult
from push.ssrf import Resolver, system_resolver

__all__ = [
    "DEFAULT_H1_TIMEOUTS",
    "DEFAULT_TIMEOUT",
    "HttpRequest",
    "HttpResponse",
    "TransportError",
    "fetch",
    "make_client",
    "make_h1_client",
    "parse_retry_after",
    "ssl_context",
    "transport_failure",
]

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=10.0, write=10.0, pool=10.0)
"""Bounded everywhere: a stuck gateway costs at most ~25 s of one slot."""

DEFAULT_H1_TIMEOUTS = H1Timeouts()
"""`H1Timeouts`' defaults, `DEFAULT_TIMEOUT`'s values: ``read`` runs from the request's
write to the answer's last byte, so it also bounds a write the server never reads."""

TransportError = httpx.HTTPError | H1Error | TimeoutError
"""What a send raises when no HTTP answer came (see `transport_failure`)."""

USER_AGENT = "pushrec-push/0.1"
_DEFAULT_HEADERS = {"user-agent": USER_AGENT}


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


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """An answer read in full (`fetch`); `headers` match names case-insensitively."""

    status: int
    headers: Mapping[str, str]
    body: bytes


async def fetch(client: H1Client, request: HttpRequest) -> HttpResponse:
    """Send `request` over `client` and read the whole answer; redirects are never
    followed (a 3xx is the answer).

    Raises `TransportError` when no answer came (`H1Error`, or `TimeoutError`); the
    destination guard's refusals from a guarded client come through as they are."""
    status, headers, body = await client.request(
        request.method, request.url, request.headers, request.body
    )
    return HttpResponse(status, headers, body)


def ssl_context(ca_bundle: Path | str | None = None) -> ssl.SSLContext:
    """The system trust store, plus `ca_bundle` (an extra PEM file) when given."""
    context = ssl.create_default_context()
    if ca_bundle:
        context.load_verify_locations(cafile=str(ca_bundle))
    return context


def make_client(
    *,
    ca_bundle: Path | str | None = None,
    h2c: bool = True,
    max_connections: int = 100,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
) -> httpx.AsyncClient:
    """The process's `httpx.AsyncClient` for APNs (HTTP/2).

    ``https://`` URLs negotiate HTTP/2 by ALPN (falling back to HTTP/1.1 only if the
    server offers nothing else). ``http://`` URLs — local gateways only — speak HTTP/2
    with prior knowledge (h2c) when `h2c`, else HTTP/1.1. Redirects are never followed;
    timeouts are bounded; proxies from the environment are ignored. The caller closes it.
    """
    install_log_redaction()
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=20)
    verify = ssl_context(ca_bundle)
    mounts: dict[str, httpx.AsyncBaseTransport | None] = {
        "https://": httpx.AsyncHTTPTransport(verify=verify, http2=True, limits=limits),
        "http://": httpx.AsyncHTTPTransport(
            verify=verify, http1=not h2c, http2=True, limits=limits
        ),
    }
    return httpx.AsyncClient(
        mounts=mounts, timeout=timeout, follow_redirects=False, trust_env=False
    )


def make_h1_client(
    *,
    ca_bundle: Path | str | None = None,
    max_connections: int = 100,
    timeouts: H1Timeouts = DEFAULT_H1_TIMEOUTS,
    keepalive_s: float = KEEPALIVE_S,
    resolver: Resolver = system_resolver,
    max_body: int = MAX_BODY,
) -> H1Client:
    """The `H1Client` (HTTP/1.1) for `fetch`: FCM's, and the base of
    `push.guarded_http.guarded_client`.

    One request per connection at a time, so the pool holds up to `max_connections`
    connections in all (FCM is one host; the worker sends a batch's messages
    concurrently), each kept alive `keepalive_s` after its last answer (a connection the
    server closed meanwhile is a retry result). `resolver` answers the name lookups.
    No proxies, no decompression. The caller closes it (``await client.aclose()``).
    """
    return H1Client(
        ssl_context=ssl_context(ca_bundle),
        max_connections=max_connections,
        keepalive_s=keepalive_s,
        timeouts=timeouts,
        resolver=resolver,
        user_agent=USER_AGENT,
        max_body=max_body,
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


def transport_failure(exc: TransportError, message_id: str, channel: str) -> DeliveryResult:
    """A request that got no HTTP answer: always transient."""
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return DeliveryResult.retry(message_id, channel, f"{channel}:timeout")
    if isinstance(exc, ConnectError):
        return DeliveryResult.retry(message_id, channel, f"{channel}:network:connect")
    return DeliveryResult.retry(message_id, channel, f"{channel}:network:{type(exc).__name__}")
