"""One contract, every gateway: the fake and the four HTTP gateways against their local
servers answer the same way to the same situations. Also: nothing secret in the logs."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from push.fake import RecordingGateway
from push.gateway import Gateway, send_many
from push.gateways.apns import ApnsGateway
from push.gateways.apns_auth import ApnsKey, ProviderTokens
from push.gateways.fcm import FcmGateway
from push.gateways.google_oauth import ServiceAccountTokens
from push.gateways.vapid import VapidKey
from push.gateways.webhook import WebhookGateway
from push.gateways.webpush import WebPushGateway
from push.guarded_http import guarded_client
from push.http import make_client, make_h1_client
from push.messages import Channel, Device, Message, WebPushSubscription
from push.result import Outcome
from push.ssrf import DestinationGuard
from push.testing import ApnsServer, FcmServer, WebhookReceiver, WebPushService
from tests.push.helpers import apns_token, fcm_token, message


@dataclass
class Case:
    open: Callable[[], AsyncIterator[Gateway]]
    new_message: Callable[[], Message]
    gone_message: Callable[[], Message]
    secrets: list[str]


@pytest.fixture(params=["fake", "fcm", "apns", "webpush", "webhook"])
def case(
    request: pytest.FixtureRequest,
    fcm: FcmServer,
    apns: ApnsServer,
    webpush: WebPushService,
    receiver: WebhookReceiver,
) -> Case:
    kind = request.param
    if kind == "fake":
        fake = RecordingGateway(Channel.FCM)
        gone = fcm_token()
        fake.invalid_tokens.add(gone)

        @asynccontextmanager
        async def open_fake() -> AsyncIterator[Gateway]:
            yield fake

        return Case(
            open_fake,
            lambda: message(Channel.FCM, fcm_token()),
            lambda: message(Channel.FCM, gone),
            [],
        )
    if kind == "fcm":
        account = fcm.service_account()
        gone = fcm_token()
        fcm.script.unregister(gone)

        @asynccontextmanager
        async def open_fcm() -> AsyncIterator[Gateway]:
            async with make_h1_client() as client:
                yield FcmGateway(client, ServiceAccountTokens(account), base_url=fcm.base_url)

        return Case(
            open_fcm,
            lambda: message(Channel.FCM, fcm_token()),
            lambda: message(Channel.FCM, gone),
            [account["private_key"].splitlines()[5], gone],
        )
    if kind == "apns":
        pem, kid, team = apns.signing_key()
        gone = apns_token()
        apns.script.unregister(gone)

        @asynccontextmanager
        async def open_apns() -> AsyncIterator[Gateway]:
            tokens = ProviderTokens(ApnsKey.from_pem(pem, key_id=kid, team_id=team))
            async with make_client() as client:
                yield ApnsGateway(client, tokens, topic=apns.topic, base_url=apns.base_url)

        return Case(
            open_apns,
            lambda: message(Channel.APNS, apns_token()),
            lambda: message(Channel.APNS, gone),
            [pem.splitlines()[2], gone],
        )
    if kind == "webpush":
        vapid = VapidKey.generate("mailto:ops@shop.example")
        gone_sub = webpush.subscribe()
        webpush.script.unregister(gone_sub["endpoint"].rsplit("/", 1)[1])

        def wp_message(sub: dict) -> Message:  # type: ignore[type-arg]
            device = Device(Channel.WEBPUSH, subscription=WebPushSubscription.from_json(sub))
            return Message(id="m" + uuid.uuid4().hex[:16], device=device, title="t", body="b")

        @asynccontextmanager
        async def open_webpush() -> AsyncIterator[Gateway]:
            guard = DestinationGuard(["127.0.0.1"])
            async with guarded_client(guard) as client:
                yield WebPushGateway(client, vapid, guard=guard)

        return Case(
            open_webpush,
            lambda: wp_message(webpush.subscribe()),
            lambda: wp_message(gone_sub),
            [gone_sub["endpoint"].rsplit("/", 1)[1], gone_sub["keys"]["auth"]],
        )
    gone_url = receiver.base_url + "/gone-hook"

    @asynccontextmanager
    async def open_webhook() -> AsyncIterator[Gateway]:
        guard = DestinationGuard(["127.0.0.1"])
        async with guarded_client(guard) as client:
            yield WebhookGateway(client, receiver.secrets, guard=guard)

    def gone_message() -> Message:
        receiver.script.push(
            __import__("push.testing", fromlist=["Scripted"]).Scripted(410), key="/gone-hook"
        )
        return message(Channel.WEBHOOK, gone_url)

    return Case(
        open_webhook,
        lambda: message(Channel.WEBHOOK, receiver.base_url + "/hook-secret-path"),
        gone_message,
        [receiver.secrets[0].removeprefix("whsec_"), "gone-hook", "hook-secret-path"],
    )


def test_valid_message_is_delivered_with_a_gateway_id(case: Case) -> None:
    async def go():  # type: ignore[no-untyped-def]
        async with case.open() as gateway:
            msg = case.new_message()
            return msg, await gateway.send(msg)

    msg, result = asyncio.run(go())
    assert result.outcome is Outcome.DELIVERED, result
    assert result.message_id == msg.id
    assert result.channel == str(msg.device.channel)
    assert result.gateway_id
    json.dumps(result.to_dict())


def test_gone_device_is_device_invalid(case: Case) -> None:
    async def go():  # type: ignore[no-untyped-def]
        async with case.open() as gateway:
            return await gateway.send(case.gone_message())

    assert asyncio.run(go()).outcome is Outcome.DEVICE_INVALID


def test_send_many_delivers_all_in_order(case: Case) -> None:
    async def go():  # type: ignore[no-untyped-def]
        async with case.open() as gateway:
            messages = [case.new_message() for _ in range(20)]
            return messages, await send_many(gateway, messages, concurrency=8)

    messages, results = asyncio.run(go())
    assert [r.message_id for r in results] == [m.id for m in messages]
    assert {r.outcome for r in results} == {Outcome.DELIVERED}


def test_logs_never_contain_tokens_endpoints_or_secrets(
    case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def go() -> None:
        async with case.open() as gateway:
            for msg in (case.new_message(), case.gone_message(), case.new_message()):
                await gateway.send(msg)
                if msg.device.token:
                    case.secrets.append(msg.device.token)
                else:
                    assert msg.device.subscription is not None
                    case.secrets.append(msg.device.subscription.endpoint.rsplit("/", 1)[1])

    asyncio.run(go())
    text = caplog.text
    assert text  # something was logged (failures are)
    leaked = [s for s in case.secrets if s and s in text]
    assert not leaked, f"found in logs: {leaked}"
