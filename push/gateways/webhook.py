"""Signed webhooks per the Standard Webhooks specification.

``POST <url>`` with a JSON body and three headers: ``webhook-id`` (the message id: stable
across retries, the receiver's idempotency key), ``webhook-timestamp`` (integer Unix
seconds of this attempt) and ``webhook-signature``: space-separated ``v1,<base64
HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``, one per secret so keys rotate without
downtime. Secrets are ``whsec_<base64 key>``. The URL passes the destination guard
(`push.ssrf`) before the request, its resolved addresses again at connect time
(`push.guarded_http.guarded_client`); redirects are refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from push.errors import (
    ConfigError,
    DestinationLookupError,
    InvalidMessageError,
    UnsafeDestinationError,
)
from push.h1 import NO_ANSWER, H1Client
from push.http import HttpRequest, fetch, parse_retry_after, transport_failure
from push.messages import Channel, Message
from push.payload import LIMITS, compact_json, fit_payload
from push.redact import fingerprint, safe_url
from push.result import DeliveryResult
from push.ssrf import DestinationGuard, refused_destination

__all__ = [
    "WebhookGateway",
    "build_webhook_body",
    "build_webhook_request",
    "decode_secret",
    "map_webhook_response",
    "sign_webhook",
    "verify_webhook",
]

EVENT_TYPE = "push.message"
log = logging.getLogger("push.webhook")


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (the prefix is optional)."""
    raw = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError("webhook secret must be whsec_ followed by base64") from exc
    if len(key) < 16:
        raise ConfigError("webhook secret key must be at least 16 bytes (24+ recommended)")
    return key


def sign_webhook(msg_id: str, timestamp: int, body: bytes, secrets: Sequence[bytes]) -> str:
    """The ``webhook-signature`` header value: one ``v1,<sig>`` per key, space-separated."""
    if "." in msg_id:
        raise InvalidMessageError("webhook-id must not contain '.'")
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in secrets
    )


def verify_webhook(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[bytes],
    *,
    tolerance_s: int = 300,
    now: float | None = None,
) -> str | None:
    """Why the webhook fails verification, or None if one signature matches in time."""
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not msg_id or not stamp or not signatures:
        return "missing webhook-id, webhook-timestamp or webhook-signature"
    if not stamp.isdigit():
        return "webhook-timestamp is not an integer"
    current = time.time() if now is None else now
    if abs(current - int(stamp)) > tolerance_s:
        return "webhook-timestamp outside tolerance"
    expected = sign_webhook(msg_id, int(stamp), body, secrets).split(" ")
    for candidate in signatures.split(" "):
        version, _, _sig = candidate.partition(",")
        if version != "v1":
            continue
        if any(hmac.compare_digest(candidate, e) for e in expected):
            return None
    return "no matching signature"


def build_webhook_body(message: Message, *, title: str, body: str, now: float) -> dict[str, Any]:
    data: dict[str, Any] = {
        "message_id": message.id,
        "title": title,
        "body": body,
        "locale": message.locale,
        "purpose": message.purpose.value,
        "priority": message.priority.value,
        "ttl": message.ttl,
        "data": dict(message.data),
    }
    data.update(message.optional_fields())
    stamp = datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")
    return {"type": EVENT_TYPE, "timestamp": stamp, "data": data}


def build_webhook_request(message: Message, *, secrets: Sequence[bytes], now: float) -> HttpRequest:
    """The signed request (pure; the SSRF check happens in the sender)."""
    if message.device.channel is not Channel.WEBHOOK:
        raise InvalidMessageError(f"not a webhook device: {message.device.channel}")
    if not secrets:
        raise ConfigError("no webhook secret configured")
    body = fit_payload(
        lambda t, b: compact_json(build_webhook_body(message, title=t, body=b, now=now)),
        message.title,
        message.body,
        limit=LIMITS["webhook"],
        channel="webhook",
    )
    stamp = int(now)
    return HttpRequest(
        "POST",
        message.device.token,
        {
            "content-type": "application/json",
            "webhook-id": message.id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign_webhook(message.id, stamp, body, secrets),
        },
        body,
    )


def map_webhook_response(
    message: Message, status: int, headers: Mapping[str, str]
) -> DeliveryResult:
    """Standard Webhooks status handling (pure)."""
    mid, ch = message.id, "webhook"
    if 200 <= status < 300:
        return DeliveryResult.ok(mid, ch, message.id, status)
    reason = f"webhook:{status}"
    if 300 <= status < 400:
        return DeliveryResult.failed(mid, ch, "webhook:redirect_refused", status=status)
    if status == 410:
        return DeliveryResult.device_invalid(mid, ch, reason, status=status)
    if status in {408, 425, 429} or status >= 500:
        retry_after = parse_retry_after(headers.get("retry-after"))
        return DeliveryResult.retry(mid, ch, reason, retry_after=retry_after, status=status)
    return DeliveryResult.failed(mid, ch, reason, status=status)


class WebhookGateway:
    """Posts signed webhooks through a client made by `push.guarded_http.guarded_client`
    with the same `guard` (and `push.guarded_http.WEBHOOK_TIMEOUTS`).

    `secrets` are ``whsec_`` strings; the first is current, the rest are being rotated out
    (all of them sign).
    """

    channel = Channel.WEBHOOK

    def __init__(
        self,
        client: H1Client,
        secrets: Sequence[str],
        *,
        guard: DestinationGuard,
    ) -> None:
        self._client = client
        self._keys = [decode_secret(s) for s in secrets]
        if not self._keys:
            raise ConfigError("no webhook secret configured")
        self._guard = guard
        self.credential_key = "webhook:" + fingerprint(self._keys[0])

    def route_key(self, message: Message) -> str:
        """Breakers and rate limits are per receiving host: one bad receiver stops alone."""
        host = urlsplit(message.device.token).hostname or ""
        return f"webhook:{fingerprint(host)}"

    async def send(self, message: Message) -> DeliveryResult:
        url = message.device.token
        try:
            self._guard.check_url(url)
            request = build_webhook_request(message, secrets=self._keys, now=time.time())
            response = await fetch(self._client, request)
        except (UnsafeDestinationError, DestinationLookupError) as exc:
            return refused_destination(exc, message.id, "webhook", url)
        except NO_ANSWER as exc:
            return transport_failure(exc, message.id, "webhook")
        result = map_webhook_response(message, response.status, response.headers)
        if not result.delivered:
            log.info("webhook %s -> %s", safe_url(message.device.token), result.reason)
        return result
