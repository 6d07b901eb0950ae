"""Local gateway servers shared by the push tests (one per module, reset per test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from push.testing import ApnsServer, FcmServer, WebhookReceiver, WebPushService, serve_app


@pytest.fixture(scope="module")
def fcm_server() -> Iterator[FcmServer]:
    server = FcmServer("pushrec-test")
    with serve_app(server):
        yield server


@pytest.fixture
def fcm(fcm_server: FcmServer) -> FcmServer:
    fcm_server.reset()
    return fcm_server


@pytest.fixture(scope="module")
def receiver_server() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    with serve_app(server):
        yield server


@pytest.fixture
def receiver(receiver_server: WebhookReceiver) -> WebhookReceiver:
    receiver_server.reset()
    return receiver_server


@pytest.fixture(scope="module")
def apns_server() -> Iterator[ApnsServer]:
    server = ApnsServer("com.example.shop")
    with serve_app(server):
        yield server


@pytest.fixture
def apns(apns_server: ApnsServer) -> ApnsServer:
    apns_server.reset()
    return apns_server


@pytest.fixture(scope="module")
def webpush_server() -> Iterator[WebPushService]:
    server = WebPushService()
    with serve_app(server):
        yield server


@pytest.fixture
def webpush(webpush_server: WebPushService) -> WebPushService:
    webpush_server.reset()
    return webpush_server
