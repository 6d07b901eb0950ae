"""Standard Webhooks signing, sends to the local receiver, and the destination guard on them."""

from __future__ import annotations

import asyncio
import json
import socket
from urllib.parse import urlsplit

import pytest

from push.gateways.webhook import (
    WebhookGateway,
    build_webhook_request,
    decode_secret,
    sign_webhook,
    verify_webhook,
)
from push.guarded_http import guarded_client
from push.messages import Channel
from push.result import DeliveryResult, Outcome
from push.ssrf import DestinationGuard
from push.testing import Scripted, WebhookReceiver, new_webhook_secret
from tests.push.helpers import message, resolver


def test_signature_matches_the_standard_webhooks_reference_vector() -> None:
    # The example from the Standard Webhooks reference libraries' test suites.
    key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    signature = sign_webhook(
        "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}', [key]
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_rotation_signs_with_every_secret_and_either_verifies() -> None:
    old, new = decode_secret(new_webhook_secret()), decode_secret(new_webhook_secret())
    msg = message(Channel.WEBHOOK, "https://hooks.example/in")
    request = build_webhook_request(msg, secrets=[new, old], now=1_700_000_000)
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert request.headers["webhook-id"] == msg.id
    for keys in ([new], [old]):
        assert verify_webhook(request.headers, request.body, keys, now=1_700_000_010) is None
    assert verify_webhook(request.headers, request.body + b" ", [new], now=1_700_000_010)
    assert verify_webhook(request.headers, request.body, [new], now=1_700_001_000)


LOCAL = DestinationGuard(["127.0.0.1"])


async def _send(
    receiver: WebhookReceiver, url: str, *, guard: DestinationGuard = LOCAL
) -> DeliveryResult:
    async with guarded_client(guard) as client:
        gateway = WebhookGateway(client, receiver.secrets, guard=guard)
        return await gateway.send(message(Channel.WEBHOOK, url, data={"sku": "42"}))


def test_webhook_delivered_and_verified(receiver: WebhookReceiver) -> None:
    result = asyncio.run(_send(receiver, receiver.base_url + "/in"))
    assert result.outcome is Outcome.DELIVERED
    [record] = receiver.received
    assert record["kind"] == "message"
    assert record["payload"]["data"]["data"] == {"sku": "42"}
    assert record["payload"]["data"]["link"].endswith("pr_mid=" + record["webhook_id"])


def test_wrong_secret_is_rejected_by_the_receiver(receiver: WebhookReceiver) -> None:
    async def go():  # type: ignore[no-untyped-def]
        async with guarded_client(LOCAL) as client:
            gateway = WebhookGateway(client, [new_webhook_secret()], guard=LOCAL)
            return await gateway.send(message(Channel.WEBHOOK, receiver.base_url + "/in"))

    result = asyncio.run(go())
    assert result.outcome is Outcome.FAILED and result.status == 401
    assert receiver.received[0]["kind"] == "rejected"


def test_redirect_to_internal_address_is_not_followed(receiver: WebhookReceiver) -> None:
    receiver.script.push(Scripted(302), key="/in")
    result = asyncio.run(_send(receiver, receiver.base_url + "/in"))
    assert result.outcome is Outcome.FAILED
    assert result.reason == "webhook:redirect_refused"


def test_non_allowlisted_loopback_is_refused_without_a_request(receiver: WebhookReceiver) -> None:
    result = asyncio.run(_send(receiver, receiver.base_url + "/in", guard=DestinationGuard()))
    assert result.outcome is Outcome.FAILED
    assert result.reason == "webhook:unsafe_destination"
    assert list(receiver.received) == []


def test_name_resolving_inward_is_refused_at_connect_without_a_request(
    receiver: WebhookReceiver,
) -> None:
    guard = DestinationGuard(resolver=resolver({"hooks.shop.example": ["127.0.0.1"]}))
    url = f"https://hooks.shop.example:{urlsplit(receiver.base_url).port}/in"
    result = asyncio.run(_send(receiver, url, guard=guard))
    assert (result.outcome, result.reason) == (Outcome.FAILED, "webhook:unsafe_destination")
    assert list(receiver.received) == []


def test_temporary_dns_failure_is_a_retry_not_a_refusal(receiver: WebhookReceiver) -> None:
    guard = DestinationGuard(resolver=resolver({"hooks.shop.example": socket.EAI_AGAIN}))
    result = asyncio.run(_send(receiver, "https://hooks.shop.example/in", guard=guard))
    assert (result.outcome, result.reason) == (Outcome.RETRY, "webhook:dns_unavailable")


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (410, Outcome.DEVICE_INVALID),
        (503, Outcome.RETRY),
        (429, Outcome.RETRY),
        (400, Outcome.FAILED),
    ],
)
def test_receiver_statuses_map_to_outcomes(
    receiver: WebhookReceiver, status: int, outcome: Outcome
) -> None:
    receiver.script.push(Scripted(status, retry_after="3"), key="/in")
    result = asyncio.run(_send(receiver, receiver.base_url + "/in"))
    assert result.outcome is outcome
    if outcome is Outcome.RETRY:
        assert result.retry_after == 3.0


def test_webhook_body_is_compact_json(receiver: WebhookReceiver) -> None:
    msg = message(Channel.WEBHOOK, "https://hooks.example/x", title="Grüße €")
    request = build_webhook_request(msg, secrets=[decode_secret(receiver.secrets[0])], now=0)
    assert json.loads(request.body)["data"]["title"] == "Grüße €"
    assert b'", "' not in request.body and b'": ' not in request.body
