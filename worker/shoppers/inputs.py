"""Parsing and validation of what producers send about activity and the catalog (the
public task contract); devices and preferences are in `contact_inputs.py`, on the same
footing.

Each `parse_*` function takes the JSON value a task received and returns a typed,
frozen model, or raises `InvalidInput` with a short machine `code` (counted in metrics)
and a human `reason` (logged and kept in the rejected stream). Nothing here touches Redis.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, ParamSpec, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
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
from worker.contract import ITEM_EVENT_TYPES, PUSH_EVENT_TYPES, SCHEMA_VERSION, canonical_id
from worker.settings import Settings
from worker.store.errors import describe, stack

log = logging.getLogger(__name__)

MIN_TS = 946_684_800.0  # 2000-01-01: older timestamps are a producer bug
_ID_RE = re.compile(r"^[^\x00-\x1f\x7f{}]+$")  # braces would break Redis hash tags
# Besides the ASCII controls: other controls (C1), format characters (bidi overrides such
# as U+202E, zero-width joiners, BOM), lone surrogates, line and paragraph separators. An
# id with them reads differently from what it is, in a log line or a terminal.
_REFUSED_IN_IDS = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


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


def _printable_id(value: str) -> str:
    if not value.isascii():
        for char in value:
            if unicodedata.category(char) in _REFUSED_IN_IDS:
                raise ValueError(
                    f"ids may not contain U+{ord(char):04X} (a control or format character)"
                )
    return value


Id = Annotated[
    str,
    BeforeValidator(canonical_id),
    StringConstraints(min_length=1, max_length=128, pattern=_ID_RE),
    AfterValidator(_printable_id),
]
ShortText = Annotated[str, StringConstraints(max_length=512)]


def _not_a_bool(value: Any) -> Any:
    """JSON's true and false are not numbers (pydantic's lax float takes them as 1 and 0)."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


# a price per unit: a number (or a numeric string, as some producers send it)
Price = Annotated[float, BeforeValidator(_not_a_bool), Field(ge=0, le=1e9, allow_inf_nan=False)]
Scalar = str | int | float | bool | None


def preview(value: Any, limit: int = 40) -> str:
    """A short rendering of an input value for a reason text: bounded, printable, and
    storable as UTF-8 (lone surrogates escaped), whatever the value."""
    if isinstance(value, int) and value.bit_length() > 256:
        text = f"<an integer of {value.bit_length()} bits>"
    elif isinstance(value, str):
        text = value[:limit]
    else:
        text = f"<{type(value).__name__}>"
    return text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def parse_ts(value: Any) -> float:
    """Epoch seconds from epoch seconds (number or digit string) or ISO-8601 (naive = UTC),
    as `indexing` reads them. Raises ValueError with the reason."""
    try:
        return _parse_ts(value)
    except ValueError as exc:
        shown = repr(preview(value)) if isinstance(value, str) else preview(value)
        raise ValueError(f"ts {shown} is neither ISO-8601 nor epoch ({exc})") from None


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


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=4096)


class Event(StrictModel):
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
    price: Price | None = None
    push_id: Id | None = None
    coupon: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
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
        if self.coupon is not None and self.type != "purchase":
            raise ValueError("coupon is only taken on purchase events (it redeems the code)")
        return self


class Item(StrictModel):
    """A catalog upsert. Fields left out keep their stored value; `ts` orders updates."""

    item_id: Id
    title: ShortText | None = None
    category: Annotated[str, StringConstraints(max_length=128)] | None = None
    brand: Annotated[str, StringConstraints(max_length=128)] | None = None
    price: Price | None = None
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


def _reason(exc: ValidationError, what: str) -> InvalidInput:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = ".".join(preview(p) if isinstance(p, str) else str(p) for p in first["loc"])
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
    message = preview(first["msg"].removeprefix("Value error, "), 300)
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return InvalidInput(code, f"{where}: {message}{more}")


def require_object(raw: Any, what: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidInput(
            "not_an_object", f"{what} must be a JSON object, got {type(raw).__name__}"
        )
    return raw


M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], data: dict[str, Any], what: str) -> M:
    """`data` as `model`, or InvalidInput naming the first problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _reason(exc, what) from None


P = ParamSpec("P")
R = TypeVar("R")


def total(parse: Callable[P, R]) -> Callable[P, R]:
    """Make a `parse_*` function total: whatever the input, it returns a value or raises
    `InvalidInput`. An error the checks above did not foresee is a parser bug, logged with
    its traceback, and the input is still rejected on its own (code `unparseable`), so
    one odd entry never takes the rest of a batch with it."""

    @functools.wraps(parse)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return parse(*args, **kwargs)
        except InvalidInput:
            raise
        except Exception as exc:
            reason = f"{parse.__name__}: {describe(exc)}"
            log.error("unforeseen error on input: %s\n%s", reason, stack(exc))
            raise InvalidInput("unparseable", reason) from None

    return checked


@total
def parse_event(raw: Any, limits: Limits, now: float) -> Event:
    data = require_object(raw, "event")
    version = data.get("v", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise InvalidInput(
            "schema_version",
            f"event schema version {preview(version, 16)!r} is not supported (this worker: "
            f"{SCHEMA_VERSION})",
        )
    event = validated(Event, data, "event")
    _check_ts(event.ts, now, limits)
    _check_props(event.props, limits)
    return event


@total
def parse_item(raw: Any, limits: Limits, now: float) -> Item:
    item = validated(Item, require_object(raw, "item"), "item")
    if item.ts is not None:
        _check_ts(item.ts, now, limits)
    return item


@total
def parse_user_id(raw: Any) -> str:
    class _User(StrictModel):
        user_id: Id

    return validated(_User, {"user_id": raw}, "forget_user").user_id
