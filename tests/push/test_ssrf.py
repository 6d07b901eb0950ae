"""The destination guard's rules: which addresses and URLs may be contacted, and how a
DNS answer is judged (scripted answers through the resolver seam, no network)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from push.errors import DestinationLookupError, UnsafeDestinationError
from push.ssrf import DestinationGuard, ResolvedAddress, canonical_host, forbidden_address
from tests.push.helpers import resolver


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254", "::1",
     "fe80::1", "fd00:ec2::254", "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255",
     "::ffff:127.0.0.1", "::ffff:10.0.0.1",
     "2002:7f00:1::", "2002:c0a8:101::1", "2002:a9fe:a9fe::",  # 6to4 of 127/8, 192.168/16, metadata
     "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",  # NAT64 of loopback and of the metadata address
     "64:ff9b:1::808:808",  # NAT64 local use (RFC 8215)
     "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
     "fec0::1", "fe80::1%eth0"],
)  # fmt: skip
def test_internal_addresses_are_forbidden(address: str) -> None:
    assert forbidden_address(address) is not None


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "2606:4700::1111", "2002:808:808::1", "64:ff9b::808:808"]
)
def test_public_addresses_and_their_6to4_and_nat64_forms_are_allowed(address: str) -> None:
    assert forbidden_address(address) is None


STRICT = DestinationGuard()


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://10.0.0.5/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://2130706433/",  # 127.0.0.1 as one decimal number
        "https://0x7f.1/",  # hex and short forms that URL parsers read as IPv4
        "https://0177.0.0.1/",  # octal
        "https://127.1/",
        "https://foo.123/",  # ends in a number, not an address
        "https://[::ffff:127.0.0.1]/",
        "https://[::ffff:7f00:1]/",
        "https://[2002:7f00:1::]/",
        "https://[64:ff9b::a00:1]/",
        "https://[fe80::1%25eth0]/",
        "https://localhost/hook",
        "https://LOCALHOST./hook",
        "https://api.localhost/hook",
        "https://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/",  # fullwidth localhost
        "https://\uff11\uff12\uff17.\uff10.\uff10.\uff11/",  # fullwidth digits
        "https://127\u30020\u30020\u30021/",  # ideographic full stops
        "https://intranet/hook",  # single label: resolved through search domains
        "https://user@push.example.com/",
        "https://push.example.com\\@127.0.0.1/",
        "https://a..b/",
        "https://push.example.com:0/",
        "https://push.example.com:99999/",
        "http://93.184.216.34/hook",  # plain http to a host not on the allowlist
        "ftp://push.example.com/x",
        "/relative/path",
    ],
)
def test_guard_refuses(url: str) -> None:
    with pytest.raises(UnsafeDestinationError):
        STRICT.check_url(url)


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://fcm.googleapis.com/fcm/send/abc", "fcm.googleapis.com"),
        ("https://Web.Push.Apple.com./x", "web.push.apple.com"),
        ("https://b\u00fccher.example/x", "xn--bcher-kva.example"),
        ("https://93.184.216.34:8443/x", "93.184.216.34"),
        ("https://[2606:4700::1111]/x", "2606:4700::1111"),
    ],
)
def test_guard_accepts_public_https_urls_and_names_their_canonical_host(
    url: str, host: str
) -> None:
    assert STRICT.check_url(url) == host


def test_allowlisted_hosts_may_be_http_and_internal_but_only_they() -> None:
    guard = DestinationGuard(["127.0.0.1", "Hooks.Internal."])
    assert guard.check_url("http://127.0.0.1:8080/x") == "127.0.0.1"
    assert guard.check_url("http://hooks.internal/x") == "hooks.internal"
    assert guard.check_url("http://HOOKS.internal./x") == "hooks.internal"
    for url in ("http://127.0.0.2/x", "http://2130706433/x", "http://localhost/x"):
        with pytest.raises(UnsafeDestinationError):
            guard.check_url(url)


def test_canonical_host_refuses_names_no_dns_could_hold() -> None:
    assert canonical_host("EXAMPLE.com.") == "example.com"
    for bad in ("a..b", "ex ample.com", "[::1x]"):
        with pytest.raises(UnsafeDestinationError):
            canonical_host(bad)


def _lookup(guard: DestinationGuard, host: str) -> list[ResolvedAddress]:
    return asyncio.run(guard.lookup(host, 443))


def test_lookup_refuses_a_name_when_any_address_is_internal() -> None:
    guard = DestinationGuard(
        resolver=resolver({"mixed.example.com": ["93.184.216.34", "10.0.0.7"]})
    )
    with pytest.raises(UnsafeDestinationError, match="private"):
        _lookup(guard, "mixed.example.com")


def test_lookup_answers_checked_addresses_and_allowlisted_ones_unchecked() -> None:
    answers = resolver({"push.example.com": ["93.184.216.34"], "hooks.internal": ["10.0.0.7"]})
    guard = DestinationGuard(["hooks.internal"], resolver=answers)
    assert _lookup(guard, "push.example.com") == [ResolvedAddress(socket.AF_INET, "93.184.216.34")]
    assert _lookup(guard, "hooks.internal") == [ResolvedAddress(socket.AF_INET, "10.0.0.7")]
    with pytest.raises(UnsafeDestinationError):
        _lookup(DestinationGuard(resolver=answers), "hooks.internal")


def test_lookup_judges_ip_literals_without_asking_dns() -> None:
    guard = DestinationGuard(resolver=resolver({}))  # any DNS question would fail
    assert _lookup(guard, "93.184.216.34") == [ResolvedAddress(socket.AF_INET, "93.184.216.34")]
    for literal in ("127.0.0.1", "::ffff:127.0.0.1", "2002:7f00:1::", "2130706433"):
        with pytest.raises(UnsafeDestinationError):
            _lookup(guard, literal)


def test_temporary_dns_failure_is_a_lookup_error_not_a_refusal() -> None:
    guard = DestinationGuard(resolver=resolver({"push.example.com": socket.EAI_AGAIN}))
    with pytest.raises(DestinationLookupError, match="temporary"):
        _lookup(guard, "push.example.com")


def test_a_name_with_no_address_is_refused() -> None:
    with pytest.raises(UnsafeDestinationError, match="does not resolve"):
        _lookup(DestinationGuard(resolver=resolver({})), "gone.example.com")


def test_a_lookup_that_does_not_answer_in_time_is_a_lookup_error() -> None:
    async def never(host: str, port: int) -> list[ResolvedAddress]:
        await asyncio.Event().wait()
        return []

    guard = DestinationGuard(resolver=never, resolve_timeout_s=0.01)
    with pytest.raises(DestinationLookupError, match="took over"):
        _lookup(guard, "slow.example.com")
