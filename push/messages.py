"""The message model: plain, immutable values the worker fills in and gateways read.

Nothing here does I/O. Builders in `push.gateways.*` turn a `Message` into a request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from push.errors import InvalidMessageError

__all__ = [
    "TRACKING_PARAM",
    "Channel",
    "Device",
    "Message",
    "Priority",
    "Purpose",
    "WebPushSubscription",
    "collapse_id",
    "tracked_link",
    "web_push_topic",
]

TRACKING_PARAM = "pr_mid"
"""Query parameter carrying the message id in deep links (clicks are attributed by it)."""

_MESSAGE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Channel(StrEnum):
    FCM = "fcm"
    APNS = "apns"
    WEBPUSH = "webpush"
    WEBHOOK = "webhook"


class Purpose(StrEnum):
    """Marketing messages obey consent and quiet hours (the worker's job); transactional
    ones (order shipped) are sent at high priority by default."""

    MARKETING = "marketing"
    TRANSACTIONAL = "transactional"


class Priority(StrEnum):
    NORMAL = "normal"
    HIGH = "high"


def _b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


@dataclass(frozen=True, slots=True)
class WebPushSubscription:
    """A browser's `PushSubscription`: endpoint URL and the two client keys (base64url)."""

    endpoint: str
    p256dh: str
    auth: str

    def __post_init__(self) -> None:
        parts = urlsplit(self.endpoint)
        if parts.scheme not in {"https", "http"} or not parts.hostname:
            raise InvalidMessageError("web push endpoint must be an absolute http(s) URL")
        try:
            key = _b64url_decode(self.p256dh)
            auth = _b64url_decode(self.auth)
        except ValueError as exc:
            raise InvalidMessageError("web push keys must be base64url") from exc
        if len(key) != 65 or key[0] != 4:
            raise InvalidMessageError("p256dh must be an uncompressed P-256 point (65 bytes)")
        if len(auth) != 16:
            raise InvalidMessageError("auth secret must be 16 bytes")

    @classmethod
    def from_json(cls, value: str | Mapping[str, Any]) -> WebPushSubscription:
        """Parse `PushSubscription.toJSON()`: ``{"endpoint", "keys": {"p256dh", "auth"}}``."""
        raw: Any = json.loads(value) if isinstance(value, str) else value
        try:
            keys = raw["keys"]
            return cls(endpoint=str(raw["endpoint"]), p256dh=keys["p256dh"], auth=keys["auth"])
        except (KeyError, TypeError) as exc:
            raise InvalidMessageError(f"web push subscription lacks {exc}") from exc

    def to_json(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "keys": {"p256dh": self.p256dh, "auth": self.auth}}


@dataclass(frozen=True, slots=True)
class Device:
    """Where a message goes. `token` is the FCM registration token, the APNs device token
    (hex) or the webhook URL; `subscription` is set for Web Push instead."""

    channel: Channel
    token: str = ""
    subscription: WebPushSubscription | None = None

    def __post_init__(self) -> None:
        if self.channel is Channel.WEBPUSH:
            if self.subscription is None:
                raise InvalidMessageError("a webpush device needs a subscription")
        elif not self.token:
            raise InvalidMessageError(f"a {self.channel} device needs a token")

    @property
    def address(self) -> str:
        """The token, URL or endpoint: secret-ish, hash it before logging (`push.redact`)."""
        return self.subscription.endpoint if self.subscription else self.token


@dataclass(frozen=True, slots=True)
class Message:
    """One personalised notification for one device.

    `id` is stable across retries: gateways derive idempotency and collapse ids from it,
    and deep links carry it as `pr_mid`. `ttl` is in seconds (0 = deliver now or never).
    `data` values are strings (FCM requires it). `coupon` is an already issued code.
    """

    id: str
    device: Device
    title: str
    body: str
    image: str | None = None
    link: str | None = None
    data: Mapping[str, str] = field(default_factory=dict)
    coupon: str | None = None
    locale: str = "en"
    purpose: Purpose = Purpose.MARKETING
    ttl: int = 86_400
    priority: Priority = Priority.NORMAL

    def __post_init__(self) -> None:
        if not _MESSAGE_ID_RE.match(self.id):
            raise InvalidMessageError("message id must be 1-64 of A-Z a-z 0-9 _ -")
        if not 0 <= self.ttl <= 28 * 86_400:
            raise InvalidMessageError("ttl must be between 0 and 28 days (FCM's maximum)")
        for key, value in self.data.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise InvalidMessageError("data keys and values must be strings")
        for url in (self.image, self.link):
            if url is not None and urlsplit(url).scheme not in {"https", "http"}:
                raise InvalidMessageError("image and link must be absolute http(s) URLs")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (messages cross task boundaries as JSON); see `from_dict`."""
        device: dict[str, Any] = {"channel": self.device.channel.value}
        if self.device.subscription is not None:
            device["subscription"] = self.device.subscription.to_json()
        else:
            device["token"] = self.device.token
        return {
            "id": self.id,
            "device": device,
            "title": self.title,
            "body": self.body,
            "image": self.image,
            "link": self.link,
            "data": dict(self.data),
            "coupon": self.coupon,
            "locale": self.locale,
            "purpose": self.purpose.value,
            "ttl": self.ttl,
            "priority": self.priority.value,
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Message:
        """Parse `to_dict` output; raises `InvalidMessageError` when malformed."""
        try:
            raw_device = value["device"]
            channel = Channel(raw_device["channel"])
            subscription = raw_device.get("subscription")
            device = Device(
                channel,
                token=str(raw_device.get("token", "")),
                subscription=WebPushSubscription.from_json(subscription) if subscription else None,
            )
            return cls(
                id=str(value["id"]),
                device=device,
                title=str(value["title"]),
                body=str(value["body"]),
                image=value.get("image"),
                link=value.get("link"),
                data=dict(value.get("data") or {}),
                coupon=value.get("coupon"),
                locale=str(value.get("locale", "en")),
                purpose=Purpose(value.get("purpose", Purpose.MARKETING.value)),
                ttl=int(value.get("ttl", 86_400)),
                priority=Priority(value.get("priority", Priority.NORMAL.value)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidMessageError(f"malformed message: {exc!r}") from exc

    def optional_fields(self) -> dict[str, str]:
        """image, link (with the tracking parameter) and coupon, where set."""
        fields = {"image": self.image, "link": self.tracked_link, "coupon": self.coupon}
        return {key: value for key, value in fields.items() if value}

    @property
    def tracked_link(self) -> str | None:
        return tracked_link(self.link, self.id) if self.link else None

    @property
    def collapse_id(self) -> str:
        return collapse_id(self.id)

    @property
    def high_priority(self) -> bool:
        return self.priority is Priority.HIGH


def tracked_link(link: str, message_id: str) -> str:
    """`link` with ``pr_mid=<message_id>`` set (replacing any earlier value)."""
    if "#" not in link and f"{TRACKING_PARAM}=" not in link:
        # Fast path (the common case): append; message ids are URL-safe by construction.
        return f"{link}{'&' if '?' in link else '?'}{TRACKING_PARAM}={message_id}"
    parts = urlsplit(link)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    query = [(k, v) for k, v in query if k != TRACKING_PARAM] + [(TRACKING_PARAM, message_id)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def collapse_id(message_id: str) -> str:
    """APNs `apns-collapse-id` / Android notification tag: the id itself (<= 64 bytes)."""
    return message_id


def web_push_topic(message_id: str) -> str:
    """Web Push `Topic`: at most 32 base64url characters, derived from the message id."""
    if len(message_id) <= 32:
        return message_id
    digest = hashlib.sha256(message_id.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")[:32]
