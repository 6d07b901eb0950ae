"""The destination guard: one for every outbound URL that comes from input.

Webhook URLs and Web Push endpoints are supplied by producers and shoppers; pushrec must
not be talked into posting to its own network. A `DestinationGuard` decides, in two
steps that share one set of rules:

* `check_url` (no I/O; at registration and before each send): an absolute ``https`` URL
  with no userinfo, a valid domain name or canonical IP literal for host. Hosts on the
  allowlist (trusted receivers, local test gateways) may use ``http`` and skip every
  address rule. Other hosts must not be an address that `forbidden_address` refuses,
  ``localhost`` or a single-label name, and a host that ends in a number must be a
  canonical dotted IPv4 address (``2130706433``, ``0x7f.1``, ``0177.0.0.1`` are how
  URL parsers spell 127.0.0.1).
* `lookup` (at connect time, inside the HTTP clients of `push.guarded_http`): resolves
  the host and returns its addresses only if *every* one is allowed; the client then
  connects to exactly those addresses, so a DNS answer that changes between check and
  connect (rebinding) cannot pass. A name that does not exist is refused
  (`UnsafeDestinationError`); a temporary failure (``EAI_AGAIN``, a lookup timeout) is
  `DestinationLookupError`, which senders answer with a retry.

Hosts are compared in canonical form: lowercase, IDNA (UTS #46, as browsers and yarl map
them: ``localhost`` in fullwidth letters is ``localhost``), without the trailing dot.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import idna

from push.errors import DestinationLookupError, UnsafeDestinationError
from push.redact import safe_url
from push.result import DeliveryResult

log = logging.getLogger(__name__)

__all__ = [
    "RESOLVE_TIMEOUT_S",
    "DestinationGuard",
    "ResolvedAddress",
    "Resolver",
    "canonical_host",
    "forbidden_address",
    "refused_destination",
    "system_resolver",
]

RESOLVE_TIMEOUT_S = 5.0
"""As long as a connect may take (`push.h1.H1Timeouts.connect`); longer is a retry."""

_METADATA = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("fd00:ec2::254"),
    ipaddress.ip_address("100.100.100.200"),
    ipaddress.ip_address("168.63.129.16"),
}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the last 32 bits are IPv4
# Not global though Python <= 3.11 says so: NAT64 local use (RFC 8215), site-local (RFC 3879)
_NOT_GLOBAL = [ipaddress.ip_network("64:ff9b:1::/48"), ipaddress.ip_network("fec0::/10")]
_ENDS_IN_NUMBER = re.compile(r"(^|\.)(\d+|0x[0-9a-f]*)$")  # WHATWG URL: parsed as IPv4
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# getaddrinfo's "this name has no address": permanent. Anything else may pass.
_NO_ADDRESS = {
    getattr(socket, name)
    for name in ("EAI_NONAME", "EAI_NODATA", "EAI_ADDRFAMILY")
    if hasattr(socket, name)
}


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries traffic to (mapped, 6to4, Teredo, NAT64)."""
    out = []
    if ip.ipv4_mapped is not None:
        out.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    if ip.teredo is not None:
        out.extend(ip.teredo)
    if ip in _NAT64:
        out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return out


def _why(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if ip in _METADATA:
        return "metadata address"
    if ip.is_loopback:
        return "loopback address"
    if ip.is_link_local:
        return "link-local address"
    if ip.is_private:
        return "private address"
    if isinstance(ip, ipaddress.IPv6Address) and any(ip in net for net in _NOT_GLOBAL):
        return "non-global address"
    if ip.is_multicast or ip.is_reserved or ip.is_unspecified or not ip.is_global:
        return "non-global address"
    return None


def forbidden_address(address: str) -> str | None:
    """Why `address` (an IP literal, IPv6 zone allowed) must not be contacted, or None.

    Refused: loopback, private, link-local (cloud metadata), CGNAT, multicast, reserved,
    unspecified and other non-global addresses, and IPv6 addresses that carry traffic to a
    refused IPv4 address (IPv4-mapped, 6to4 ``2002::/16``, Teredo, NAT64 ``64:ff9b::/96``).
    A NAT64 address of a public IPv4 address is allowed (DNS64 networks answer with them).
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        for inner in embedded:
            why = _why(inner)
            if why:
                return why
        if ip in _NAT64 or ip.ipv4_mapped is not None:
            return None  # judged by its IPv4 address alone (Python calls the prefix reserved)
    return _why(ip)


def canonical_host(host: str) -> str:
    """`host` as compared and resolved: lowercase ASCII (IDNA, UTS #46), no trailing dot,
    IPv6 without brackets. Raises `UnsafeDestinationError` for a name no DNS could hold."""
    host = host.strip("[]")
    if ":" in host:
        try:
            return str(ipaddress.IPv6Address(host.split("%", 1)[0]))
        except ValueError:
            raise UnsafeDestinationError("host is not a valid IPv6 address") from None
    name = host[:-1] if host.endswith(".") else host
    try:
        return idna.encode(name, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError):
        raise UnsafeDestinationError("host is not a valid domain name") from None


@dataclass(frozen=True, slots=True)
class ResolvedAddress:
    family: socket.AddressFamily
    address: str


Resolver = Callable[[str, int], Awaitable[Sequence[ResolvedAddress]]]
"""``(host, port) -> addresses``; raises `socket.gaierror` as getaddrinfo does. A seam:
tests inject answers (a rebinding name, ``EAI_AGAIN``) without patching."""


async def system_resolver(host: str, port: int) -> list[ResolvedAddress]:
    """The system's getaddrinfo (in the loop's thread pool), TCP addresses."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ResolvedAddress(socket.AddressFamily(info[0]), str(info[4][0])) for info in infos]


class DestinationGuard:
    """The rules for URLs that come from input (see the module doc).

    `allowed_hosts` are exempt from the address rules and may use ``http``: trusted
    receivers, local test gateways. `resolver` answers `lookup` (the system's by default).
    Immutable; share one per process.
    """

    def __init__(
        self,
        allowed_hosts: Iterable[str] = (),
        *,
        resolver: Resolver = system_resolver,
        resolve_timeout_s: float = RESOLVE_TIMEOUT_S,
    ) -> None:
        self.allowed_hosts = frozenset(canonical_host(h) for h in allowed_hosts if h.strip())
        self._resolver = resolver
        self._timeout = resolve_timeout_s

    def exempt(self, host: str) -> bool:
        try:
            return canonical_host(host) in self.allowed_hosts
        except UnsafeDestinationError:
            return False

    def check_url(self, url: str) -> str:
        """The canonical host of `url` when the URL may be contacted (DNS aside); raises
        `UnsafeDestinationError` with the reason otherwise. No I/O."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise UnsafeDestinationError("not a valid URL (port or IPv6 host)") from None
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise UnsafeDestinationError("must be an absolute http(s) URL")
        if "@" in parts.netloc or "\\" in parts.netloc:
            raise UnsafeDestinationError("must not carry user information (user@host)")
        if port == 0:
            raise UnsafeDestinationError("port 0 is not a destination")
        host = canonical_host(parts.hostname)
        if host in self.allowed_hosts:
            return host
        if parts.scheme != "https":
            raise UnsafeDestinationError("must use https")
        self._check_host(host)
        return host

    def _check_host(self, host: str) -> None:
        if ":" in host:
            why = forbidden_address(host)
            if why:
                raise UnsafeDestinationError(f"host is a {why}")
            return
        if _ENDS_IN_NUMBER.search(host):
            try:
                address = str(ipaddress.IPv4Address(host))
            except ValueError:
                raise UnsafeDestinationError(
                    "host ends in a number but is no canonical IPv4 address"
                ) from None
            why = forbidden_address(address)
            if why:
                raise UnsafeDestinationError(f"host is a {why}")
            return
        labels = host.split(".")
        if host == "localhost" or host.endswith(".localhost"):
            raise UnsafeDestinationError("host is a loopback name")
        if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
            raise UnsafeDestinationError("host must be a fully qualified domain name")

    async def lookup(self, host: str, port: int) -> list[ResolvedAddress]:
        """The addresses to connect to for `host`, every one allowed (allowlisted hosts:
        unchecked). Raises `UnsafeDestinationError` (a refused address, a name with no
        address) or `DestinationLookupError` (temporary: retry)."""
        exempt = self.exempt(host)
        if not exempt:
            self._check_host(canonical_host(host))
        try:
            literal = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
        except ValueError:
            literal = None
        if literal is not None:
            family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
            return [ResolvedAddress(family, host.strip("[]"))]
        try:
            async with asyncio.timeout(self._timeout):
                addresses = list(await self._resolver(host, port))
        except TimeoutError:
            raise DestinationLookupError(
                f"resolving the host took over {self._timeout} s"
            ) from None
        except socket.gaierror as exc:
            if exc.errno in _NO_ADDRESS:
                raise UnsafeDestinationError("host does not resolve") from None
            raise DestinationLookupError(f"temporary DNS failure ({exc.strerror})") from None
        except OSError as exc:
            raise DestinationLookupError(f"DNS lookup failed ({exc.strerror})") from None
        if not addresses:
            raise UnsafeDestinationError("host does not resolve")
        if not exempt:
            for resolved in addresses:
                why = forbidden_address(resolved.address)
                if why:
                    raise UnsafeDestinationError(f"host resolves to a {why}")
        return addresses


def refused_destination(
    exc: UnsafeDestinationError | DestinationLookupError, message_id: str, channel: str, url: str
) -> DeliveryResult:
    """What a send to `url` came to when the guard stopped it: a destination it refuses
    fails for good; one whose name can't be looked up now is a retry."""
    if isinstance(exc, DestinationLookupError):
        log.info("%s %s: %s", channel, safe_url(url), exc)
        return DeliveryResult.retry(message_id, channel, f"{channel}:dns_unavailable")
    log.warning("%s %s refused: %s", channel, safe_url(url), exc)
    return DeliveryResult.failed(message_id, channel, f"{channel}:unsafe_destination")
