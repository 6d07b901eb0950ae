"""Standard Webhooks signing, the SSRF guard, and sends to the local receiver."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from push.errors import UnsafeDestinationError
from push.gateways.webhook import (
    WebhookGateway,
    build_webhook_request,
    decode_secret,
    sign_webhook,
    verify_webhook,
)
from push.messages import Channel
from push.result import Outcome
from push.ssrf import UnsafeAddressError, check_destination, forbidden_address, guarded_session
from push.testing import Scripted, WebhookReceiver, new_webhook_secret
from tests.push.helpers import message


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


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254", "::1",
     "fe80::1", "fd00:ec2::254", "::ffff:127.0.0.1", "100.64.0.1", "0.0.0.0"],
)  # fmt: skip
def test_internal_addresses_are_forbidden(address: str) -> None:
    assert forbidden_address(address) is not None


def test_public_address_is_allowed() -> None:
    assert forbidden_address("93.184.216.34") is None


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://10.0.0.5/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://localhost/hook",
        "http://93.184.216.34/hook",  # plain http to a non-allowlisted host
        "ftp://example.com/x",
    ],
)
def test_ssrf_guard_refuses(url: str) -> None:
    with pytest.raises(UnsafeDestinationError):
        asyncio.run(check_destination(url, allowed_hosts=()))


def test_guarded_session_refuses_at_connect_time() -> None:
    # No pre-check here: the resolver itself must refuse a name that resolves inward.
    async def go() -> None:
        async with guarded_session(()) as session, session.get("http://localhost:9/"):
            pass

    with pytest.raises(aiohttp.ClientConnectorError) as caught:
        asyncio.run(go())
    assert isinstance(caught.value.os_error, UnsafeAddressError)


async def _send(receiver: WebhookReceiver, url: str, *, allowed: tuple[str, ...] = ("127.0.0.1",)):  # type: ignore[no-untyped-def]
    async with guarded_session(allowed) as session:
        gateway = WebhookGateway(session, receiver.secrets, allowed_hosts=allowed)
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
        async with guarded_session(["127.0.0.1"]) as session:
            gateway = WebhookGateway(session, [new_webhook_secret()], allowed_hosts=["127.0.0.1"])
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
    result = asyncio.run(_send(receiver, receiver.base_url + "/in", allowed=()))
    assert result.outcome is Outcome.FAILED
    assert result.reason == "webhook:unsafe_destination"
    assert list(receiver.received) == []


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


def test_pre_check_is_remembered_per_origin_but_not_across_origins(
    receiver: WebhookReceiver,
) -> None:
    async def go() -> list[Outcome]:
        async with guarded_session(["127.0.0.1"]) as session:
            gateway = WebhookGateway(session, receiver.secrets, allowed_hosts=["127.0.0.1"])
            outcomes = []
            for url in (
                receiver.base_url + "/a",
                receiver.base_url + "/b",
                "https://10.0.0.1/a",
                "https://10.0.0.1/a",
            ):
                outcomes.append((await gateway.send(message(Channel.WEBHOOK, url))).outcome)
            return outcomes

    assert asyncio.run(go()) == [
        Outcome.DELIVERED,
        Outcome.DELIVERED,
        Outcome.FAILED,
        Outcome.FAILED,
    ]
