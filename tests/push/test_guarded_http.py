"""The guarded client checks at connect time, on the addresses the guard resolved, and
connects to exactly those: names are answered through the resolver seam, the server is
a real local gateway on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlsplit

import pytest

from push.errors import DestinationLookupError, UnsafeDestinationError
from push.guarded_http import guarded_client
from push.ssrf import DestinationGuard
from push.testing import WebhookReceiver
from tests.push.helpers import resolver

NAME = "gateway.pushrec.test"  # known to the resolver seam only, not to real DNS


def _url(base_url: str) -> str:
    return f"http://{NAME}:{urlsplit(base_url).port}/_admin/received"


async def _get(guard: DestinationGuard, url: str) -> int:
    async with guarded_client(guard) as client:
        status, _, _ = await client.request("GET", url, {})
        return status


def test_connects_to_the_address_the_guard_resolved(receiver: WebhookReceiver) -> None:
    guard = DestinationGuard([NAME], resolver=resolver({NAME: ["127.0.0.1"]}))
    assert asyncio.run(_get(guard, _url(receiver.base_url))) == 200


def test_a_name_that_resolves_inward_is_refused_at_connect_time(
    receiver: WebhookReceiver,
) -> None:
    # The URL alone passes (a public-looking name); its DNS answer does not.
    guard = DestinationGuard(resolver=resolver({NAME: ["127.0.0.1"]}))
    with pytest.raises(UnsafeDestinationError, match="loopback"):
        asyncio.run(_get(guard, _url(receiver.base_url)))
    assert list(receiver.received) == []


def test_temporary_dns_failure_at_connect_time_is_a_lookup_error(
    receiver: WebhookReceiver,
) -> None:
    guard = DestinationGuard(resolver=resolver({NAME: socket.EAI_AGAIN}))
    with pytest.raises(DestinationLookupError):
        asyncio.run(_get(guard, _url(receiver.base_url)))
