"""Firebase Cloud Messaging, HTTP v1 API.

``POST {base}/v1/projects/{project}/messages:send`` with ``Authorization: Bearer <OAuth2
token>`` and ``{"message": {...}}``. One message per request, over HTTP/1.1 keep-alive
connections (FCM accepts HTTP/1.1 and HTTP/2; HTTP/1.1 through `push.h1` costs the sender
far less CPU than httpx's HTTP/2, see docs/push.md).
Errors carry ``error.details[]`` entries; the `google.firebase.fcm.v1.FcmError` entry's
``errorCode`` decides the outcome (see `map_fcm_response`).

Collapse: the Android notification ``tag``, the APNs ``apns-collapse-id`` and the Web Push
``Topic`` are derived from the message id, so a duplicate replaces the first notification.
Android ``collapse_key`` is deliberately not set: FCM keeps only 4 collapse keys per
device while it is offline, and a key per message would let FCM drop messages.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from push.errors import ConfigError, CredentialsError, InvalidMessageError
from push.gateways.google_oauth import ServiceAccountTokens
from push.h1 import NO_ANSWER, H1Client
from push.http import HttpRequest, fetch, parse_retry_after, transport_failure
from push.messages import Channel, Message, web_push_topic
from push.payload import LIMITS, compact_json, fit_payload
from push.redact import fingerprint
from push.result import DeliveryResult

__all__ = ["FCM_URL", "FcmGateway", "build_fcm_body", "build_fcm_request", "map_fcm_response"]

FCM_URL = "https://fcm.googleapis.com"
_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
_RESERVED_DATA_KEYS = {"from", "notification", "message_type"}
_RESERVED_DATA_PREFIXES = ("google", "gcm")

log = logging.getLogger("push.fcm")


def _check_data_keys(data: Mapping[str, str]) -> None:
    for key in data:
        if key in _RESERVED_DATA_KEYS or key.lower().startswith(_RESERVED_DATA_PREFIXES):
            raise InvalidMessageError(f"data key {key!r} is reserved by FCM")


def build_fcm_body(message: Message, *, now: float, title: str, body: str) -> dict[str, Any]:
    """The ``{"message": ...}`` object for `message` with the given (possibly shortened) text."""
    data = dict(message.data)
    data["pr_mid"] = message.id
    link = message.tracked_link
    if link:
        data["pr_link"] = link
    if message.coupon:
        data["pr_coupon"] = message.coupon
    notification: dict[str, Any] = {"title": title, "body": body}
    if message.image:
        notification["image"] = message.image
    high = message.high_priority
    apns_headers = {
        "apns-collapse-id": message.collapse_id,
        "apns-priority": "10" if high else "5",
        "apns-expiration": str(int(now) + message.ttl if message.ttl else 0),
    }
    webpush: dict[str, Any] = {
        "headers": {
            "TTL": str(message.ttl),
            "Urgency": "high" if high else "normal",
            "Topic": web_push_topic(message.id),
        }
    }
    if link and link.startswith("https://"):
        webpush["fcm_options"] = {"link": link}
    return {
        "message": {
            "token": message.device.token,
            "notification": notification,
            "data": data,
            "android": {
                "priority": "HIGH" if high else "NORMAL",
                "ttl": f"{message.ttl}s",
                "notification": {"tag": message.collapse_id},
            },
            "apns": {"headers": apns_headers},
            "webpush": webpush,
        }
    }


def build_fcm_request(
    message: Message, *, project_id: str, access_token: str, now: float, base_url: str = FCM_URL
) -> HttpRequest:
    """The complete request; text shortened to keep the body within 4096 bytes.

    Raises `InvalidMessageError` (wrong channel, reserved data key) or
    `PayloadTooLargeError`.
    """
    if message.device.channel is not Channel.FCM:
        raise InvalidMessageError(f"not an FCM device: {message.device.channel}")
    _check_data_keys(message.data)
    body = fit_payload(
        lambda t, b: compact_json(build_fcm_body(message, now=now, title=t, body=b)),
        message.title,
        message.body,
        limit=LIMITS["fcm"],
        channel="fcm",
    )
    return HttpRequest(
        "POST",
        f"{base_url.rstrip('/')}/v1/projects/{project_id}/messages:send",
        {
            "authorization": f"Bearer {access_token}",
            "content-type": "application/json; charset=UTF-8",
        },
        body,
    )


def _error_parts(body: bytes) -> tuple[str, str, str, list[dict[str, Any]]]:
    """(status, message, FcmError errorCode, details) from an error body; blanks if absent."""
    try:
        error = json.loads(body)["error"]
        details = [d for d in error.get("details", []) if isinstance(d, dict)]
    except (ValueError, KeyError, TypeError, AttributeError):
        return "", "", "", []
    code = next(
        (str(d.get("errorCode", "")) for d in details if d.get("@type") == _FCM_ERROR_TYPE), ""
    )
    return str(error.get("status", "")), str(error.get("message", "")), code, details


def map_fcm_response(
    message: Message, status: int, headers: Mapping[str, str], body: bytes
) -> DeliveryResult:
    """FCM's answer -> outcome (pure). See the table in docs/push.md."""
    mid, ch = message.id, "fcm"
    if status == 200:
        try:
            name = str(json.loads(body)["name"])
        except (ValueError, KeyError, TypeError):
            name = None
        return DeliveryResult.ok(mid, ch, name)
    error_status, text, code, details = _error_parts(body)
    reason = f"fcm:{code or error_status or status}"
    retry_after = parse_retry_after(headers.get("retry-after"))
    if code == "UNREGISTERED":
        return DeliveryResult.device_invalid(mid, ch, reason, status=status)
    if code == "SENDER_ID_MISMATCH":
        return DeliveryResult.device_invalid(mid, ch, reason, status=status)
    if code == "INVALID_ARGUMENT" or (status == 400 and not code):
        bad_fields = [
            str(v.get("field", ""))
            for d in details
            if d.get("@type") == _BAD_REQUEST_TYPE
            for v in d.get("fieldViolations", [])
            if isinstance(v, dict)
        ]
        if "message.token" in bad_fields or (
            not bad_fields and "registration token" in text.lower()
        ):
            return DeliveryResult.device_invalid(mid, ch, "fcm:INVALID_TOKEN", status=status)
        return DeliveryResult.failed(mid, ch, reason, status=status)
    if status == 401 and code != "THIRD_PARTY_AUTH_ERROR":
        # Our access token was refused (expired early, revoked): the sender drops it and
        # the next attempt mints a new one; if minting fails, that is `credentials`.
        return DeliveryResult.retry(mid, ch, "fcm:UNAUTHENTICATED", retry_after=1.0, status=status)
    if code in {"QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL"} or status == 429 or status >= 500:
        return DeliveryResult.retry(mid, ch, reason, retry_after=retry_after, status=status)
    if code == "THIRD_PARTY_AUTH_ERROR" or status in {401, 403}:
        return DeliveryResult.credentials(mid, ch, reason, status=status)
    if status == 404:  # project not found: our configuration, not the device
        return DeliveryResult.credentials(mid, ch, reason, status=status)
    return DeliveryResult.failed(mid, ch, reason, status=status)


class FcmGateway:
    """Sends to FCM over one shared `push.h1.H1Client` (`push.http.make_h1_client`).

    `tokens` mints the OAuth token; `project_id` defaults to the service account's.
    `base_url` is configuration, not input: the client needs no destination guard.
    """

    channel = Channel.FCM

    def __init__(
        self,
        client: H1Client,
        tokens: ServiceAccountTokens,
        *,
        project_id: str | None = None,
        base_url: str = FCM_URL,
    ) -> None:
        project = project_id or tokens.project_id
        if not project:
            raise ConfigError("FCM project id is neither set nor in the credentials")
        self._client = client
        self._tokens = tokens
        self.project_id = project
        self.base_url = base_url
        self.credential_key = f"fcm:{tokens.key}"

    def route_key(self, message: Message) -> str:
        return self.credential_key

    async def send(self, message: Message) -> DeliveryResult:
        try:
            access_token = await self._tokens.token()
        except CredentialsError as exc:
            log.warning("fcm token unavailable (%s): %s", self.credential_key, exc)
            if exc.transient:
                return DeliveryResult.retry(message.id, "fcm", "fcm:token_endpoint")
            return DeliveryResult.credentials(message.id, "fcm", "fcm:oauth")
        request = build_fcm_request(
            message,
            project_id=self.project_id,
            access_token=access_token,
            now=time.time(),
            base_url=self.base_url,
        )
        try:
            response = await fetch(self._client, request)
        except NO_ANSWER as exc:
            result = transport_failure(exc, message.id, "fcm")
        else:
            result = map_fcm_response(message, response.status, response.headers, response.body)
            if response.status == 401:
                self._tokens.invalidate()
        if not result.delivered:
            log.info(
                "fcm %s for message %s device %s",
                result.reason,
                message.id,
                fingerprint(message.device.token),
            )
        return result
