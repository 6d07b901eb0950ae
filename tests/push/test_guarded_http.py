"""The guarded clients check at connect time, on the addresses the guard resolved, and
connect to exactly those: names are answered through the resolver seam, the servers are
the real local gateways on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import pytest

from push.errors import DestinationLookupError, UnsafeDestinationError
from push.guarded_http import guarded_client, guarded_session
from push.ssrf import DestinationGuard
from push.testing import WebhookReceiver, WebPushService
from tests.push.helpers import resolver

NAME = "gateway.pushrec.test"  # known to the resolver seam only, not to real DNS


def _url(base_url: str) -> str:
    return f"http://{NAME}:{urlsplit(base_url).port}/_admin/received"


async def _get_httpx(guard: DestinationGuard, url: str) -> int:
    async with guarded_client(guard) as client:
        return (await client.get(url)).status_code


async def _get_aiohttp(guard: DestinationGuard, url: str) -> int:
    async with guarded_session(guard) as session, session.get(url) as response:
        return response.status


Get = Callable[[DestinationGuard, str], Awaitable[int]]
GETS: list[Get] = [_get_httpx, _get_aiohttp]


@pytest.mark.parametrize("get", GETS, ids=["httpx", "aiohttp"])
def test_connects_to_the_address_the_guard_resolved(
    get: Get, webpush: WebPushService, receiver: WebhookReceiver
) -> None:
    guard = DestinationGuard([NAME], resolver=resolver({NAME: ["127.0.0.1"]}))
    server = webpush if get is _get_httpx else receiver
    assert asyncio.run(get(guard, _url(server.base_url))) == 200


@pytest.mark.parametrize("get", GETS, ids=["httpx", "aiohttp"])
def test_a_name_that_resolves_inward_is_refused_at_connect_time(
    get: Get, webpush: WebPushService, receiver: WebhookReceiver
) -> None:
    # The URL alone passes (a public-looking name); its DNS answer does not.
    server = webpush if get is _get_httpx else receiver
    guard = DestinationGuard(resolver=resolver({NAME: ["127.0.0.1"]}))
    with pytest.raises(UnsafeDestinationError, match="loopback"):
        asyncio.run(get(guard, _url(server.base_url)))
    assert list(server.received) == []


@pytest.mark.parametrize("get", GETS, ids=["httpx", "aiohttp"])
def test_temporary_dns_failure_at_connect_time_is_a_lookup_error(
    get: Get, webpush: WebPushService
) -> None:
    guard = DestinationGuard(resolver=resolver({NAME: socket.EAI_AGAIN}))
    with pytest.raises(DestinationLookupError):
        asyncio.run(get(guard, _url(webpush.base_url)))


def test_httpx_refuses_an_internal_ip_literal_at_connect_time(webpush: WebPushService) -> None:
    # aiohttp never asks its resolver about literals: `check_url` before the request does.
    with pytest.raises(UnsafeDestinationError):
        asyncio.run(_get_httpx(DestinationGuard(), webpush.base_url + "/_admin/received"))
    assert list(webpush.received) == []
