"""Parsing and validation of everything producers send (the public task contract).

Each `parse_*` function takes the JSON value a task received and returns a typed,
frozen model, or raises `InvalidInput` with a short machine `code` (counted in metrics)
and a human `reason` (logged and kept in the rejected stream). Nothing here touches Redis.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from indexing import parse_ts as _parse_ts
from worker.contract import ITEM_EVENT_TYPES, PUSH_EVENT_TYPES, SCHEMA_VERSION
from worker.settings import Settings

MIN_TS = 946_684_800.0  # 2000-01-01: older timestamps are a producer bug
_ID_RE = re.compile(r"^[^\x00-\x1f\x7f{}]+$")  # braces would break Redis hash tags
_HHMM_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_LOCALE_RE = re.compile(r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]+$")


class InvalidInput(ValueError):
    """Input that violates the contract. Never retried: record it and move on."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """The bounds the contract promises (README, "Task contract")."""

    props_max_keys: int = 32
    props_max_bytes: int = 2048
    future_skew_s: int = 86_400
    batch_max_events: int = 500
    batch_max_items: int = 500

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            props_max_keys=settings.props_max_keys,
            props_max_bytes=settings.props_max_bytes,
            future_skew_s=settings.future_skew_s,
            batch_max_events=settings.batch_max_events,
            batch_max_items=settings.batch_max_items,
        )


def _id_from_json(value: Any) -> Any:
    # Ids are strings; integers are accepted for convenience (JSON user ids often are).
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value.strip()
    return value


Id = Annotated[
    str,
    BeforeValidator(_id_from_json),
    StringConstraints(min_length=1, max_length=128, pattern=_ID_RE),
]
ShortText = Annotated[str, StringConstraints(max_length=512)]
Scalar = str | int | float | bool | None


def parse_ts(value: Any) -> float:
    """Epoch seconds from epoch seconds (number or digit string) or ISO-8601 (naive = UTC),
    as `indexing` reads them. Raises ValueError with the reason."""
    try:
        return _parse_ts(value)
    except ValueError as exc:
        raise ValueError(f"ts {str(value)[:40]!r} is neither ISO-8601 nor epoch ({exc})") from None


def _check_ts(ts: float, now: float, limits: Limits) -> None:
    if ts < MIN_TS:
        raise InvalidInput("bad_timestamp", f"ts {ts:.0f} is before 2000-01-01")
    if ts > now + limits.future_skew_s:
        hint = " (milliseconds? ts is in seconds)" if ts > 1e11 else ""
        raise InvalidInput("bad_timestamp", f"ts {ts:.0f} is in the future{hint}")


def _check_props(props: dict[str, Scalar], limits: Limits) -> None:
    if len(props) > limits.props_max_keys:
        raise InvalidInput(
            "oversize_props", f"props has {len(props)} keys, at most {limits.props_max_keys}"
        )
    size = len(json.dumps(props, separators=(",", ":")).encode())
    if size > limits.props_max_bytes:
        raise InvalidInput(
            "oversize_props", f"props is {size} bytes of JSON, at most {limits.props_max_bytes}"
        )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=4096)


class Event(_Strict):
    """One shopper activity event. `ts` is epoch seconds (UTC)."""

    v: Literal[1] = SCHEMA_VERSION
    event_id: Id
    user_id: Id
    type: Literal[
        "view", "search", "add_to_cart", "remove_from_cart", "purchase", "push_open", "push_click"
    ]
    ts: Annotated[float, BeforeValidator(parse_ts)]
    item_id: Id | None = None
    query: ShortText | None = None
    quantity: int = Field(default=1, ge=1, le=1_000_000, strict=True)
    price: float | None = Field(default=None, ge=0, le=1e9, allow_inf_nan=False)
    push_id: Id | None = None
    props: dict[Annotated[str, StringConstraints(max_length=64)], Scalar] = Field(
        default_factory=dict
    )

    @model_validator(mode="after")
    def _fields_for_type(self) -> Event:
        if self.type in ITEM_EVENT_TYPES and self.item_id is None:
            raise ValueError(f"item_id is required for {self.type} events")
        if self.type == "search" and not self.query:
            raise ValueError("query is required for search events")
        if self.type in PUSH_EVENT_TYPES and self.push_id is None:
            raise ValueError(f"push_id is required for {self.type} events")
        return self


class Item(_Strict):
    """A catalog upsert. Fields left out keep their stored value; `ts` orders updates."""

    item_id: Id
    title: ShortText | None = None
    category: Annotated[str, StringConstraints(max_length=128)] | None = None
    brand: Annotated[str, StringConstraints(max_length=128)] | None = None
    price: float | None = Field(default=None, ge=0, le=1e9, allow_inf_nan=False)
    stock: int | None = Field(default=None, ge=0, le=1_000_000_000, strict=True)
    url: Annotated[str, StringConstraints(max_length=2048)] | None = None
    image: Annotated[str, StringConstraints(max_length=2048)] | None = None
    ts: Annotated[float, BeforeValidator(parse_ts)] | None = None

    @field_validator("url", "image")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in {"http", "https"}:
            raise ValueError("must be an http(s) URL")
        return value

    def catalog_fields(self) -> dict[str, str]:
        """The fields this upsert sets, as Redis hash values."""
        out: dict[str, str] = {}
        for name in ("title", "category", "brand", "price", "stock", "url", "image"):
            if name in self.model_fields_set and getattr(self, name) is not None:
                out[name] = str(getattr(self, name))
        return out


def _b64url_len(value: str, size: int, name: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise ValueError(f"{name} is not base64url") from None
    if len(raw) != size:
        raise ValueError(f"{name} must decode to {size} bytes, got {len(raw)}")
    return value


class SubscriptionKeys(_Strict):
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


class WebPushSubscription(BaseModel):
    """A browser PushSubscription as JSON (`subscription.toJSON()`)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    endpoint: Annotated[str, StringConstraints(max_length=2048)]
    keys: SubscriptionKeys
    expiration_time: float | None = Field(default=None, alias="expirationTime")

    @field_validator("endpoint")
    @classmethod
    def _https(cls, value: str) -> str:
        if urlsplit(value).scheme != "https" or not urlsplit(value).hostname:
            raise ValueError("endpoint must be an https URL")
        return value


class DeviceRegistration(_Strict):
    """A device (or webhook) to reach a shopper on. `token` is the FCM registration token,
    the APNs device token (hex) or the webhook URL; Web Push uses `subscription`."""

    user_id: Id
    channel: Literal["fcm", "apns", "webpush", "webhook"]
    token: str | None = None
    subscription: WebPushSubscription | None = None
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


class DeviceRemoval(_Strict):
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


class QuietHours(_Strict):
    """Local wall-clock window with no marketing pushes; may wrap midnight (22:00-08:00)."""

    start: str
    end: str

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM_RE.match(value):
            raise ValueError("use HH:MM (24 h)")
        return value


class Preferences(_Strict):
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
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA timezone {value[:64]!r}") from None
        return value

    @field_validator("locale")
    @classmethod
    def _locale(cls, value: str | None) -> str | None:
        if value is not None and not _LOCALE_RE.match(value):
            raise ValueError("locale must look like en, en-GB or pt_BR")
        return value


def _reason(exc: ValidationError, what: str) -> InvalidInput:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"])
    code = {
        "missing": "missing_field",
        "extra_forbidden": "unknown_field",
        "literal_error": "unknown_value",
    }.get(first["type"], "invalid_field")
    if first["loc"][:1] == ("type",) and first["type"] == "literal_error":
        code = "unknown_type"
    if first["loc"][:1] == ("v",):
        code = "schema_version"
    if first["loc"][:1] == ("ts",) or (first["loc"][-1:] == ("ts",)):
        code = "bad_timestamp"
    where = f"{what}.{loc}" if loc else what
    message = first["msg"].removeprefix("Value error, ")
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return InvalidInput(code, f"{where}: {message}{more}")


def _require_object(raw: Any, what: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidInput(
            "not_an_object", f"{what} must be a JSON object, got {type(raw).__name__}"
        )
    return raw


M = TypeVar("M", bound=BaseModel)


def _validated(model: type[M], data: dict[str, Any], what: str) -> M:
    """`data` as `model`, or InvalidInput naming the first problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _reason(exc, what) from None


def parse_event(raw: Any, limits: Limits, now: float) -> Event:
    data = _require_object(raw, "event")
    version = data.get("v", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise InvalidInput(
            "schema_version",
            f"event schema version {str(version)[:16]!r} is not supported (this worker: "
            f"{SCHEMA_VERSION})",
        )
    event = _validated(Event, data, "event")
    _check_ts(event.ts, now, limits)
    _check_props(event.props, limits)
    return event


def parse_item(raw: Any, limits: Limits, now: float) -> Item:
    item = _validated(Item, _require_object(raw, "item"), "item")
    if item.ts is not None:
        _check_ts(item.ts, now, limits)
    return item


def parse_device(raw: Any) -> DeviceRegistration:
    return _validated(DeviceRegistration, _require_object(raw, "device"), "device")


def parse_device_removal(raw: Any) -> DeviceRemoval:
    return _validated(DeviceRemoval, _require_object(raw, "device"), "device")


def parse_preferences(raw: Any) -> Preferences:
    return _validated(Preferences, _require_object(raw, "preferences"), "preferences")


def parse_user_id(raw: Any) -> str:
    class _User(_Strict):
        user_id: Id

    return _validated(_User, {"user_id": raw}, "forget_user").user_id
