"""Apple Push Notification service, provider API over HTTP/2 with token authentication.

``POST {base}/3/device/{hex token}`` with ``authorization: bearer <ES256 JWT>`` and the
headers ``apns-topic``, ``apns-push-type``, ``apns-priority`` (10 now / 5 power-saving),
``apns-expiration`` (Unix seconds; 0 = once), ``apns-collapse-id`` (<= 64 bytes, from
the message id) and ``apns-id`` (a UUID derived from the message id, so retries of one
message carry one id). The JSON body has ``aps`` plus our custom keys; at most 4096
bytes. A ``https://`` base negotiates HTTP/2 by ALPN; an ``http://`` base (local tests)
is spoken as HTTP/2 with prior knowledge by `push.http.make_client`.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from push.errors import ConfigError, InvalidMessageError
from push.gateways.apns_auth import ProviderTokens
from push.http import HttpRequest, parse_retry_after, transport_failure
from push.messages import Channel, Message
from push.payload import LIMITS, compact_json, fit_payload
from push.redact import fingerprint
from push.result import DeliveryResult

__all__ = [
    "APNS_SANDBOX_URL",
    "APNS_URL",
    "ApnsGateway",
    "apns_id",
    "build_apns_payload",
    "build_apns_request",
    "map_apns_response",
]

APNS_URL = "https://api.push.apple.com"
APNS_SANDBOX_URL = "https://api.sandbox.push.apple.com"
_TOKEN_RE = re.compile(r"^[0-9a-fA-F]{64,200}$")
_NAMESPACE = uuid.UUID("5c6f1f0e-7d55-4a8e-9a8b-6f2b4cc1f0a1")

_DEVICE_REASONS = {"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered", "ExpiredToken"}
_CONFIG_REASONS = {
    "BadCertificate", "BadCertificateEnvironment", "Forbidden", "InvalidProviderToken",
    "MissingProviderToken", "BadTopic", "MissingTopic", "TopicDisallowed",
}  # fmt: skip
_TRANSIENT_REASONS = {
    "TooManyProviderTokenUpdates", "TooManyRequests", "InternalServerError",
    "ServiceUnavailable", "Shutdown", "IdleTimeout",
}  # fmt: skip

log = logging.getLogger("push.apns")


def apns_id(message_id: str) -> str:
    """The canonical lowercase UUID sent as ``apns-id``: stable for one message id."""
    return str(uuid.uuid5(_NAMESPACE, message_id))


def valid_device_token(token: str) -> bool:
    return bool(_TOKEN_RE.match(token))


def build_apns_payload(message: Message, *, title: str, body: str) -> dict[str, Any]:
    """``{"aps": {...}, custom keys}``: alert, sound, thread id; image and link as custom
    keys for the app's notification service extension (``mutable-content``)."""
    if "aps" in message.data:
        raise InvalidMessageError("data key 'aps' is reserved by APNs")
    aps: dict[str, Any] = {"alert": {"title": title, "body": body}, "sound": "default"}
    payload: dict[str, Any] = {"aps": aps, **message.data, "pr_mid": message.id}
    if message.image:
        aps["mutable-content"] = 1
        payload["pr_image"] = message.image
    link = message.tracked_link
    if link:
        payload["pr_link"] = link
    if message.coupon:
        payload["pr_coupon"] = message.coupon
    return payload


def build_apns_request(
    message: Message,
    *,
    topic: str,
    provider_token: str,
    now: float,
    base_url: str = APNS_URL,
) -> HttpRequest:
    """The complete request (pure); text shortened to fit 4096 bytes.

    Raises `InvalidMessageError` (not an APNs device, malformed token) or
    `PayloadTooLargeError`.
    """
    if message.device.channel is not Channel.APNS:
        raise InvalidMessageError(f"not an APNs device: {message.device.channel}")
    token = message.device.token
    if not valid_device_token(token):
        raise InvalidMessageError("APNs device token must be hexadecimal")
    collapse = message.collapse_id
    if len(collapse.encode()) > 64:
        raise InvalidMessageError("apns-collapse-id exceeds 64 bytes")
    body = fit_payload(
        lambda t, b: compact_json(build_apns_payload(message, title=t, body=b)),
        message.title,
        message.body,
        limit=LIMITS["apns"],
        channel="apns",
    )
    headers = {
        "authorization": f"bearer {provider_token}",
        "apns-topic": topic,
        "apns-push-type": "alert",
        "apns-priority": "10" if message.high_priority else "5",
        "apns-expiration": str(int(now) + message.ttl if message.ttl else 0),
        "apns-collapse-id": collapse,
        "apns-id": apns_id(message.id),
        "content-type": "application/json",
    }
    return HttpRequest("POST", f"{base_url.rstrip('/')}/3/device/{token}", headers, body)


def map_apns_response(
    message: Message, status: int, headers: Mapping[str, str], body: bytes
) -> DeliveryResult:
    """APNs' answer -> outcome (pure). ``403 ExpiredProviderToken`` is a retry: the
    sender drops the token and the next attempt mints a fresh one (no sooner than 20
    minutes after the last: `ProviderTokens.invalidate`)."""
    mid, ch = message.id, "apns"
    if status == 200:
        return DeliveryResult.ok(mid, ch, headers.get("apns-id"))
    reason_text, stamp = "", None
    try:
        parsed = json.loads(body) if body else {}
        reason_text = str(parsed.get("reason", ""))
        stamp = parsed.get("timestamp")
    except (ValueError, AttributeError):
        pass
    reason = f"apns:{reason_text or status}"
    if reason_text in _DEVICE_REASONS or status == 410:
        since = None
        if isinstance(stamp, int | float):
            since = datetime.fromtimestamp(stamp / 1000, UTC)
        return DeliveryResult.device_invalid(mid, ch, reason, invalid_since=since, status=status)
    if reason_text == "ExpiredProviderToken":
        return DeliveryResult.retry(mid, ch, reason, retry_after=1.0, status=status)
    if reason_text in _CONFIG_REASONS or status == 403:
        return DeliveryResult.credentials(mid, ch, reason, status=status)
    if reason_text in _TRANSIENT_REASONS or status == 429 or status >= 500:
        retry_after = parse_retry_after(headers.get("retry-after"))
        return DeliveryResult.retry(mid, ch, reason, retry_after=retry_after, status=status)
    return DeliveryResult.failed(mid, ch, reason, status=status)


class ApnsGateway:
    """Sends to APNs over HTTP/2 with a shared provider token (`ProviderTokens`)."""

    channel = Channel.APNS

    def __init__(
        self,
        client: httpx.AsyncClient,
        tokens: ProviderTokens,
        *,
        topic: str,
        base_url: str = APNS_URL,
    ) -> None:
        if not topic:
            raise ConfigError("APNs topic (the app's bundle id) is required")
        self._client = client
        self._tokens = tokens
        self.topic = topic
        self.base_url = base_url
        self.credential_key = tokens.credential_key

    def route_key(self, message: Message) -> str:
        return self.credential_key

    async def send(self, message: Message) -> DeliveryResult:
        if not valid_device_token(message.device.token):
            return DeliveryResult.device_invalid(message.id, "apns", "apns:BadDeviceToken")
        now = time.time()
        provider_token = await self._tokens.token(now)
        request = build_apns_request(
            message,
            topic=self.topic,
            provider_token=provider_token,
            now=now,
            base_url=self.base_url,
        )
        try:
            response = await self._client.send(request.to_httpx(self._client))
        except httpx.HTTPError as exc:
            return transport_failure(exc, message.id, "apns")
        result = map_apns_response(
            message, response.status_code, response.headers, response.content
        )
        if result.reason == "apns:ExpiredProviderToken":
            wait = await self._tokens.invalidate(provider_token, now)
            if wait > 0:  # no new token before then: retrying sooner meets the same answer
                result = result.with_retry_after(wait)
        if not result.delivered:
            log.info(
                "apns %s for message %s device %s",
                result.reason,
                message.id,
                fingerprint(message.device.token),
            )
        return result
