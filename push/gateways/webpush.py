"""Web Push: RFC 8030 delivery, RFC 8291 message encryption, RFC 8292 VAPID.

``POST <subscription endpoint>`` with the payload encrypted as ``aes128gcm``: a fresh
ephemeral P-256 key and a fresh 16-byte salt per message, ECDH with the subscriber's
``p256dh`` key and its ``auth`` secret (via `http_ece`). Plaintext is at most 3993 bytes
(one 4096-byte record). Headers: ``TTL`` (always), ``Urgency``, ``Topic`` (the message
id, <= 32 base64url characters: a duplicate replaces the first while undelivered),
``Content-Encoding: aes128gcm`` and the VAPID ``Authorization``. 201 means accepted;
404/410 mean the subscription is gone. Endpoints come from browsers via shoppers: each
passes the destination guard (`push.ssrf`) before the request and again at connect time
(`push.guarded_http.guarded_client`; HTTP/1.1, which every push service accepts).
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import http_ece
from cryptography.hazmat.primitives.asymmetric import ec

from push.errors import DestinationLookupError, InvalidMessageError, UnsafeDestinationError
from push.gateways.vapid import ORIGINS_KEPT, VapidKey, origin_of
from push.h1 import NO_ANSWER, H1Client
from push.http import HttpRequest, fetch, parse_retry_after, transport_failure
from push.lru import LruCache
from push.messages import Channel, Message, WebPushSubscription, web_push_topic
from push.payload import LIMITS, compact_json, fit_payload
from push.redact import fingerprint, safe_url
from push.result import DeliveryResult
from push.ssrf import DestinationGuard, refused_destination

__all__ = [
    "WebPushGateway",
    "build_webpush_payload",
    "build_webpush_request",
    "encrypt",
    "map_webpush_response",
]

log = logging.getLogger("push.webpush")


def _b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def encrypt(
    plaintext: bytes,
    subscription: WebPushSubscription,
    *,
    server_key: ec.EllipticCurvePrivateKey | None = None,
    salt: bytes | None = None,
) -> bytes:
    """RFC 8291 ``aes128gcm`` body (header: salt, rs=4096, keyid = our ephemeral public key).

    `server_key` and `salt` are fresh random values unless given (tests only).
    """
    return bytes(
        http_ece.encrypt(
            plaintext,
            salt=salt or os.urandom(16),
            private_key=server_key or ec.generate_private_key(ec.SECP256R1()),
            dh=_b64url_decode(subscription.p256dh),
            auth_secret=_b64url_decode(subscription.auth),
            version="aes128gcm",
        )
    )


def build_webpush_payload(message: Message, *, title: str, body: str) -> dict[str, Any]:
    """What the service worker receives (JSON, before encryption)."""
    payload: dict[str, Any] = {
        "title": title,
        "body": body,
        "tag": web_push_topic(message.id),
        "pr_mid": message.id,
        "data": dict(message.data),
    }
    payload.update(message.optional_fields())
    return payload


def build_webpush_request(
    message: Message,
    *,
    vapid: VapidKey,
    now: float,
    server_key: ec.EllipticCurvePrivateKey | None = None,
    salt: bytes | None = None,
) -> HttpRequest:
    """The encrypted, VAPID-signed request. Raises `InvalidMessageError` or
    `PayloadTooLargeError` (plaintext over 3993 bytes even with shortened text)."""
    subscription = message.device.subscription
    if message.device.channel is not Channel.WEBPUSH or subscription is None:
        raise InvalidMessageError(f"not a web push device: {message.device.channel}")
    plaintext = fit_payload(
        lambda t, b: compact_json(build_webpush_payload(message, title=t, body=b)),
        message.title,
        message.body,
        limit=LIMITS["webpush"],
        channel="webpush",
    )
    headers = {
        "ttl": str(message.ttl),
        "urgency": "high" if message.high_priority else "normal",
        "topic": web_push_topic(message.id),
        "content-encoding": "aes128gcm",
        "content-type": "application/octet-stream",
        "authorization": vapid.authorization(subscription.endpoint, now),
    }
    body = encrypt(plaintext, subscription, server_key=server_key, salt=salt)
    return HttpRequest("POST", subscription.endpoint, headers, body)


def map_webpush_response(
    message: Message, status: int, headers: Mapping[str, str]
) -> DeliveryResult:
    """Push service answer -> outcome (pure).

    401 means our VAPID JWT is refused (credentials). 403 is per subscription (it was
    created for another application server key): the subscription is unusable, so the
    device is invalid, and one such subscriber never opens the breaker for everyone.
    """
    mid, ch = message.id, "webpush"
    if status in {200, 201, 202}:
        return DeliveryResult.ok(mid, ch, headers.get("location"), status)
    reason = f"webpush:{status}"
    if status in {403, 404, 410}:
        return DeliveryResult.device_invalid(mid, ch, reason, status=status)
    if status == 401:
        return DeliveryResult.credentials(mid, ch, reason, status=status)
    if status == 429 or status >= 500:
        retry_after = parse_retry_after(headers.get("retry-after"))
        return DeliveryResult.retry(mid, ch, reason, retry_after=retry_after, status=status)
    return DeliveryResult.failed(mid, ch, reason, status=status)


class WebPushGateway:
    """Sends Web Push messages; one `VapidKey` for every push service. `client` is made
    by `push.guarded_http.guarded_client` with the same `guard`."""

    channel = Channel.WEBPUSH

    def __init__(self, client: H1Client, vapid: VapidKey, *, guard: DestinationGuard) -> None:
        self._client = client
        self._vapid = vapid
        self._guard = guard
        self.credential_key = vapid.credential_key
        self._route_keys: LruCache[str, str] = LruCache(ORIGINS_KEPT)  # origin -> key

    def route_key(self, message: Message) -> str:
        """Per VAPID key and push service (FCM, Mozilla, Apple... fail independently)."""
        origin = origin_of(message.device.address)
        key = self._route_keys.get(origin)
        if key is None:
            key = f"webpush:{self.credential_key}:{fingerprint(origin)}"
            self._route_keys.put(origin, key)
        return key

    async def send(self, message: Message) -> DeliveryResult:
        endpoint = message.device.address
        try:
            self._guard.check_url(endpoint)
            request = build_webpush_request(message, vapid=self._vapid, now=time.time())
            response = await fetch(self._client, request)
        except (UnsafeDestinationError, DestinationLookupError) as exc:
            return refused_destination(exc, message.id, "webpush", endpoint)
        except NO_ANSWER as exc:
            return transport_failure(exc, message.id, "webpush")
        result = map_webpush_response(message, response.status, response.headers)
        if not result.delivered:
            log.info("webpush %s -> %s", safe_url(message.device.address), result.reason)
        return result
