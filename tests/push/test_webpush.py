"""Web Push: RFC 8291 encryption, RFC 8292 VAPID, and sends to the local push service
that decrypts with the subscriber's keys."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from dataclasses import replace
from urllib.parse import urlsplit

import http_ece
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from push.errors import PayloadTooLargeError
from push.gateways.vapid import ORIGINS_KEPT, VapidKey
from push.gateways.webpush import (
    WebPushGateway,
    build_webpush_request,
    encrypt,
    map_webpush_response,
)
from push.guarded_http import guarded_client
from push.messages import Channel, Device, Message, WebPushSubscription
from push.result import DeliveryResult, Outcome
from push.ssrf import DestinationGuard
from push.testing import Scripted, WebPushService
from tests.push.helpers import resolver

SUBJECT = "mailto:ops@shop.example"
LOCAL = DestinationGuard(["127.0.0.1"])  # the local push service


def _subscriber() -> tuple[WebPushSubscription, ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    auth = os.urandom(16)
    raw = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    b64 = lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")  # noqa: E731
    sub = WebPushSubscription("https://push.example/send/abc", b64(raw), b64(auth))
    return sub, key, auth


def _message(sub: WebPushSubscription | dict, **overrides: object) -> Message:  # type: ignore[type-arg]
    subscription = (
        sub if isinstance(sub, WebPushSubscription) else WebPushSubscription.from_json(sub)
    )
    fields: dict[str, object] = {
        "id": "m" + os.urandom(6).hex(),
        "device": Device(Channel.WEBPUSH, subscription=subscription),
        "title": "Back in stock",
        "body": "Your size is here",
        "link": "https://shop.example/p/1",
    }
    fields.update(overrides)
    return Message(**fields)  # type: ignore[arg-type]


def test_request_decrypts_with_subscriber_keys_and_carries_vapid() -> None:
    sub, key, auth = _subscriber()
    vapid = VapidKey.generate(SUBJECT)
    msg = _message(sub)
    req = build_webpush_request(msg, vapid=vapid, now=1_700_000_000)
    assert req.headers["content-encoding"] == "aes128gcm"
    assert req.headers["ttl"] == "86400"
    assert req.headers["topic"] == msg.id
    plaintext = http_ece.decrypt(req.body, private_key=key, auth_secret=auth, version="aes128gcm")
    assert json.loads(plaintext)["title"] == "Back in stock"
    scheme, params = req.headers["authorization"].split(" ", 1)
    assert scheme == "vapid"
    t, k = (p.split("=", 1)[1] for p in params.split(", "))
    assert k == vapid.public_key_b64
    claims = jwt.decode(
        t,
        vapid.private_key.public_key(),
        algorithms=["ES256"],
        audience="https://push.example",
        options={"verify_exp": False},
    )
    assert claims["sub"] == SUBJECT
    assert claims["exp"] - 1_700_000_000 <= 24 * 3600


def test_every_message_gets_a_fresh_key_and_salt() -> None:
    sub, _, _ = _subscriber()
    vapid = VapidKey.generate(SUBJECT)
    msg = _message(sub)
    first, second = (build_webpush_request(msg, vapid=vapid, now=0).body for _ in range(2))
    assert first[:16] != second[:16]  # salt
    assert first[21:86] != second[21:86]  # sender's ephemeral public key


def test_plaintext_limit_is_3993_bytes_after_shortening() -> None:
    sub, key, auth = _subscriber()
    msg = _message(sub, body="ü" * 5000)
    req = build_webpush_request(msg, vapid=VapidKey.generate(SUBJECT), now=0)
    assert len(req.body) <= 4096
    plaintext = http_ece.decrypt(req.body, private_key=key, auth_secret=auth, version="aes128gcm")
    assert len(plaintext) <= 3993
    with pytest.raises(PayloadTooLargeError):
        build_webpush_request(
            _message(sub, data={"blob": "x" * 4000}), vapid=VapidKey.generate(SUBJECT), now=0
        )


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (201, Outcome.DELIVERED),
        (404, Outcome.DEVICE_INVALID),
        (410, Outcome.DEVICE_INVALID),
        (403, Outcome.DEVICE_INVALID),
        (401, Outcome.CREDENTIALS),
        (413, Outcome.FAILED),
        (429, Outcome.RETRY),
        (503, Outcome.RETRY),
    ],
)
def test_status_mapping(status: int, outcome: Outcome) -> None:
    sub, _, _ = _subscriber()
    assert map_webpush_response(_message(sub), status, {}).outcome is outcome


async def _send(
    messages: list[Message], vapid: VapidKey, guard: DestinationGuard = LOCAL
) -> list[DeliveryResult]:
    async with guarded_client(guard) as client:
        gateway = WebPushGateway(client, vapid, guard=guard)
        return [await gateway.send(m) for m in messages]


def test_push_service_decrypts_and_records(webpush: WebPushService) -> None:
    vapid = VapidKey.generate(SUBJECT)
    msg = _message(webpush.subscribe(vapid.public_key_b64), coupon="7KQ2-M9XD")
    [result] = asyncio.run(_send([msg], vapid))
    assert result.outcome is Outcome.DELIVERED, result
    assert result.gateway_id and "/m/" in result.gateway_id
    [record] = webpush.received
    assert record["payload"]["coupon"] == "7KQ2-M9XD"
    assert record["payload"]["link"].endswith("pr_mid=" + msg.id)
    assert record["headers"]["topic"] == msg.id


def test_gone_subscription_is_device_invalid(webpush: WebPushService) -> None:
    subscription = webpush.subscribe()
    webpush.script.unregister(subscription["endpoint"].rsplit("/", 1)[1])
    [result] = asyncio.run(_send([_message(subscription)], VapidKey.generate(SUBJECT)))
    assert result.outcome is Outcome.DEVICE_INVALID and result.status == 410


def test_subscription_bound_to_another_key_is_403(webpush: WebPushService) -> None:
    other = VapidKey.generate(SUBJECT)
    [result] = asyncio.run(
        _send([_message(webpush.subscribe(other.public_key_b64))], VapidKey.generate(SUBJECT))
    )
    assert result.status == 403


def test_429_with_retry_after(webpush: WebPushService) -> None:
    subscription = webpush.subscribe()
    path = "/" + subscription["endpoint"].split("/", 3)[3]
    webpush.script.push(Scripted(429, retry_after="12"), key=path)
    [result] = asyncio.run(_send([_message(subscription)], VapidKey.generate(SUBJECT)))
    assert result.outcome is Outcome.RETRY and result.retry_after == 12.0


def test_endpoint_on_loopback_is_refused_without_a_request(webpush: WebPushService) -> None:
    # The case: a subscription naming 127.0.0.1, the guard not told to allow it.
    vapid = VapidKey.generate(SUBJECT)
    msg = _message(webpush.subscribe(vapid.public_key_b64))
    [result] = asyncio.run(_send([msg], vapid, DestinationGuard()))
    assert (result.outcome, result.reason) == (Outcome.FAILED, "webpush:unsafe_destination")
    assert list(webpush.received) == []


def test_endpoint_name_resolving_inward_is_refused_at_connect_time(
    webpush: WebPushService,
) -> None:
    vapid = VapidKey.generate(SUBJECT)
    subscription = webpush.subscribe(vapid.public_key_b64)
    port, path = urlsplit(subscription["endpoint"]).port, urlsplit(subscription["endpoint"]).path
    subscription["endpoint"] = f"https://push.shop.example:{port}{path}"
    guard = DestinationGuard(resolver=resolver({"push.shop.example": ["127.0.0.1"]}))
    [result] = asyncio.run(_send([_message(subscription)], vapid, guard))
    assert (result.outcome, result.reason) == (Outcome.FAILED, "webpush:unsafe_destination")
    assert list(webpush.received) == []


def test_temporary_dns_failure_is_a_retry(webpush: WebPushService) -> None:
    subscription = webpush.subscribe()
    subscription["endpoint"] = "https://push.shop.example/push/x"
    guard = DestinationGuard(resolver=resolver({"push.shop.example": socket.EAI_AGAIN}))
    [result] = asyncio.run(_send([_message(subscription)], VapidKey.generate(SUBJECT), guard))
    assert (result.outcome, result.reason) == (Outcome.RETRY, "webpush:dns_unavailable")


def test_per_origin_caches_are_bounded() -> None:
    # Every endpoint a shopper registers names an origin: the JWTs and route keys kept
    # per origin must not grow with them.
    async def go() -> tuple[int, int]:
        vapid = VapidKey.generate(SUBJECT)
        sub, _, _ = _subscriber()
        async with guarded_client(LOCAL) as client:
            gateway = WebPushGateway(client, vapid, guard=LOCAL)
            first = gateway.route_key(_message(sub))
            for n in range(ORIGINS_KEPT + 50):
                endpoint = f"https://p{n}.push.example/x"
                vapid.authorization(endpoint, now=1000)
                gateway.route_key(_message(replace(sub, endpoint=endpoint)))
            again = gateway.route_key(_message(sub))  # evicted, then recomputed alike
            assert again == first
            return len(vapid._jwts), len(gateway._route_keys)

    jwts, route_keys = asyncio.run(go())
    assert jwts == ORIGINS_KEPT
    assert route_keys == ORIGINS_KEPT


def test_vapid_jwt_is_reused_per_origin() -> None:
    vapid = VapidKey.generate(SUBJECT)
    a = vapid.authorization("https://push.example/x", now=1000)
    assert vapid.authorization("https://push.example/y", now=2000) == a
    assert vapid.authorization("https://other.example/y", now=2000) != a
    assert vapid.authorization("https://push.example/y", now=1000 + 12 * 3600) != a


def test_encryption_matches_the_rfc_8291_appendix_a_example() -> None:
    def unb64(value: str) -> bytes:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))

    sender = ec.derive_private_key(
        int.from_bytes(unb64("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"), "big"), ec.SECP256R1()
    )
    subscription = WebPushSubscription(
        "https://push.example/x",
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
        "BTBZMqHH6r4Tts7J_aSIgg",
    )
    body = encrypt(
        b"When I grow up, I want to be a watermelon",
        subscription,
        server_key=sender,
        salt=unb64("DGv6ra1nlYgDCS1FRnbzlw"),
    )
    assert body == unb64(
        "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInm"
        "YWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQ"
        "exSgSxsj_Qulcy4a-fN"
    )
