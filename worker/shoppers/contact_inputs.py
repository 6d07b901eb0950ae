"""Parsing and validation of devices and contact preferences (the public task contract).

As in `inputs.py`: each `parse_*` function takes the JSON value a task received and
returns a typed, frozen model, or raises `InvalidInput` with a code and a reason. Webhook
URLs and Web Push endpoints must also pass the destination guard (`push.ssrf`; code
``unsafe_destination``), the same rules the push worker applies before connecting.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from push.errors import UnsafeDestinationError
from push.ssrf import DestinationGuard
from worker.shoppers.inputs import (
    Id,
    InvalidInput,
    StrictModel,
    parse_ts,
    preview,
    require_object,
    total,
    validated,
)

_HHMM_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_LOCALE_RE = re.compile(r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]+$")
_TZ_MAX_LEN = 64  # the longest IANA name is 32 characters


def _b64url_len(value: str, size: int, name: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise ValueError(f"{name} is not base64url") from None
    if len(raw) != size:
        raise ValueError(f"{name} must decode to {size} bytes, got {len(raw)}")
    return value


class SubscriptionKeys(StrictModel):
    p256dh: str
    auth: str

    @field_validator("p256dh")
    @classmethod
    def _p256dh(cls, value: str) -> str:
        _b64url_len(value, 65, "keys.p256dh")
        if base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))[0] != 4:
            raise ValueError("keys.p256dh must be an uncompressed P-256 point")
        return value

    @field_validator("auth")
    @classmethod
    def _auth(cls, value: str) -> str:
        return _b64url_len(value, 16, "keys.auth")


class SubscriptionInput(BaseModel):
    """A browser PushSubscription as JSON (`subscription.toJSON()`)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    endpoint: Annotated[str, StringConstraints(max_length=2048)]
    keys: SubscriptionKeys
    expiration_time: float | None = Field(default=None, alias="expirationTime")

    @field_validator("endpoint")
    @classmethod
    def _absolute(cls, value: str) -> str:
        # https is the guard's rule (its allowlist may take http: local test gateways)
        if urlsplit(value).scheme not in {"http", "https"} or not urlsplit(value).hostname:
            raise ValueError("endpoint must be an http(s) URL (the destination guard wants https)")
        return value


class DeviceRegistration(StrictModel):
    """A device (or webhook) to reach a shopper on. `token` is the FCM registration token,
    the APNs device token (hex) or the webhook URL; Web Push uses `subscription`."""

    user_id: Id
    channel: Literal["fcm", "apns", "webpush", "webhook"]
    token: str | None = None
    subscription: SubscriptionInput | None = None
    ts: Annotated[float, BeforeValidator(parse_ts)] | None = None

    @model_validator(mode="after")
    def _target_for_channel(self) -> DeviceRegistration:
        if self.channel == "webpush":
            if self.subscription is None or self.token is not None:
                raise ValueError("webpush devices need `subscription` (endpoint + keys), no token")
            return self
        if self.token is None or self.subscription is not None:
            raise ValueError(f"{self.channel} devices need `token`, no subscription")
        token = self.token
        if self.channel == "apns" and not (
            64 <= len(token) <= 200 and len(token) % 2 == 0 and _HEX_RE.match(token)
        ):
            raise ValueError("apns token must be the device token in hex (64+ hex digits)")
        if self.channel == "fcm" and (not token or any(c.isspace() for c in token)):
            raise ValueError("fcm token must be a non-empty string without whitespace")
        if self.channel == "webhook":
            parts = urlsplit(token)
            if parts.scheme not in {"http", "https"} or not parts.hostname:
                raise ValueError("webhook token must be an http(s) URL")
        return self

    @property
    def address(self) -> str:
        """What identifies the device at its gateway (token, endpoint or URL)."""
        if self.subscription is not None:
            return self.subscription.endpoint
        assert self.token is not None
        return self.token


class DeviceRemoval(StrictModel):
    user_id: Id
    channel: Literal["fcm", "apns", "webpush", "webhook"]
    token: str | None = None
    endpoint: str | None = None

    @model_validator(mode="after")
    def _one_address(self) -> DeviceRemoval:
        if (self.token is None) == (self.endpoint is None):
            raise ValueError("give exactly one of token (fcm, apns, webhook) or endpoint (webpush)")
        return self

    @property
    def address(self) -> str:
        return self.token if self.token is not None else str(self.endpoint)


class QuietHours(StrictModel):
    """Local wall-clock window with no marketing pushes; may wrap midnight (22:00-08:00)."""

    start: str
    end: str

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM_RE.match(value):
            raise ValueError("use HH:MM (24 h)")
        return value


class Preferences(StrictModel):
    """A partial update of a shopper's contact preferences.

    `consent` maps purpose -> channel (or "*" for every channel) -> granted.
    `quiet_hours: null` clears them. Fields left out are unchanged.
    """

    user_id: Id
    consent: (
        dict[
            Literal["marketing", "transactional"],
            dict[Literal["fcm", "apns", "webpush", "webhook", "*"], bool],
        ]
        | None
    ) = None
    timezone: str | None = None
    locale: str | None = None
    quiet_hours: QuietHours | None = None
    ts: Annotated[float, BeforeValidator(parse_ts)] | None = None

    @field_validator("timezone")
    @classmethod
    def _iana(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            if len(value) > _TZ_MAX_LEN:
                raise ValueError("too long")
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a bad file name
            raise ValueError(f"unknown IANA timezone {preview(value, 64)!r}") from None
        return value

    @field_validator("locale")
    @classmethod
    def _locale(cls, value: str | None) -> str | None:
        if value is not None and not _LOCALE_RE.match(value):
            raise ValueError("locale must look like en, en-GB or pt_BR")
        return value


@total
def parse_device(raw: Any, *, guard: DestinationGuard) -> DeviceRegistration:
    """A device registration; webhook URLs and Web Push endpoints must pass `guard`."""
    device = validated(DeviceRegistration, require_object(raw, "device"), "device")
    if device.channel in {"webhook", "webpush"}:
        where = "device.token" if device.channel == "webhook" else "device.subscription.endpoint"
        try:
            guard.check_url(device.address)
        except UnsafeDestinationError as exc:
            raise InvalidInput("unsafe_destination", f"{where}: {exc}") from None
    return device


@total
def parse_device_removal(raw: Any) -> DeviceRemoval:
    return validated(DeviceRemoval, require_object(raw, "device"), "device")


@total
def parse_preferences(raw: Any) -> Preferences:
    return validated(Preferences, require_object(raw, "preferences"), "preferences")
