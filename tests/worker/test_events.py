"""The event contract: what is accepted, and the reason given for what is not."""

from __future__ import annotations

from typing import Any

import pytest

from push.ssrf import DestinationGuard
from tests.clock import FIXED_NOW
from worker.shoppers.contact_inputs import parse_device, parse_preferences
from worker.shoppers.inputs import InvalidInput, Limits, parse_event, parse_item, parse_ts

NOW = FIXED_NOW  # scoring and parsing never meet a real clock
LIMITS = Limits()


def event(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "e1",
        "user_id": "u1",
        "type": "view",
        "item_id": "sku-1",
        "ts": "2026-11-28T08:00:00Z",
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def rejected(raw: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        parse_event(raw, LIMITS, NOW)
    return info.value


def test_iso_and_epoch_timestamps_parse_to_the_same_instant() -> None:
    assert parse_ts("2026-11-28T08:00:00Z") == parse_ts(1_795_852_800) == 1_795_852_800.0
    assert parse_ts("2026-11-28T09:00:00+01:00") == 1_795_852_800.0
    assert parse_ts("2026-11-28T08:00:00") == 1_795_852_800.0  # naive means UTC
    assert parse_ts("1795852800.5") == 1_795_852_800.5


def test_valid_view_event_parses_with_defaults() -> None:
    parsed = parse_event(event(), LIMITS, NOW)
    assert (parsed.user_id, parsed.type, parsed.item_id, parsed.quantity) == (
        "u1",
        "view",
        "sku-1",
        1,
    )
    assert parsed.ts == 1_795_852_800.0


def test_integer_ids_are_accepted_as_strings() -> None:
    assert parse_event(event(user_id=17850), LIMITS, NOW).user_id == "17850"


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        ([1, 2], "not_an_object", "JSON object"),
        (event(event_id=None), "missing_field", "event.event_id"),
        (event(type="like"), "unknown_type", "event.type"),
        (event(item_id=None), "invalid_field", "item_id is required for view"),
        (event(type="search", item_id=None), "invalid_field", "query is required"),
        (event(type="push_open", item_id=None), "invalid_field", "push_id is required"),
        (event(ts="yesterday"), "bad_timestamp", "neither ISO-8601 nor epoch"),
        (event(ts=NOW * 1000), "bad_timestamp", "milliseconds"),
        (event(ts=12), "bad_timestamp", "before 2000"),
        (event(quantity="2"), "invalid_field", "event.quantity"),
        (event(quantity=0), "invalid_field", "event.quantity"),
        (event(price=float("nan")), "invalid_field", "event.price"),
        (event(price=True), "invalid_field", "not true or false"),
        (event(colour="red"), "unknown_field", "event.colour"),
        (event(v=2), "schema_version", "schema version"),
        (event(user_id="a{b}"), "invalid_field", "event.user_id"),
        (event(user_id=""), "invalid_field", "event.user_id"),
        (event(props={f"k{i}": i for i in range(40)}), "oversize_props", "40 keys"),
        (event(props={"blob": "x" * 3000}), "oversize_props", "bytes of JSON"),
        (event(props={"nested": {"a": 1}}), "invalid_field", "event.props.nested"),
    ],
)
def test_bad_event_is_rejected_with_code_and_reason(raw: Any, code: str, words: str) -> None:
    error = rejected(raw)
    assert error.code == code
    assert words in error.reason


def test_item_upsert_keeps_only_fields_given() -> None:
    item = parse_item({"item_id": "sku-1", "price": 9.5, "stock": 0}, LIMITS, NOW)
    assert item.catalog_fields() == {"price": "9.5", "stock": "0"}
    with pytest.raises(InvalidInput, match=r"item\.stock"):
        parse_item({"item_id": "sku-1", "stock": -1}, LIMITS, NOW)
    with pytest.raises(InvalidInput, match=r"item\.price"):
        parse_item({"item_id": "sku-1", "price": False}, LIMITS, NOW)
    assert parse_item({"item_id": "sku-1", "price": "2.5"}, LIMITS, NOW).price == 2.5
    with pytest.raises(InvalidInput, match=r"item\.url"):
        parse_item({"item_id": "sku-1", "url": "javascript:alert(1)"}, LIMITS, NOW)


GUARD = DestinationGuard()
P256DH = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
AUTH = "BTBZMqHH6r4Tts7J_aSIgg"


def test_device_channels_check_their_token_shapes() -> None:
    assert (
        parse_device({"user_id": "u", "channel": "apns", "token": "ab" * 32}, guard=GUARD).address
        == "ab" * 32
    )
    sub = {"endpoint": "https://push.example.net/x", "keys": {"p256dh": P256DH, "auth": AUTH}}
    assert parse_device(
        {"user_id": "u", "channel": "webpush", "subscription": sub}, guard=GUARD
    ).address == ("https://push.example.net/x")
    for bad, words in [
        ({"user_id": "u", "channel": "apns", "token": "not-hex"}, "hex"),
        ({"user_id": "u", "channel": "webpush", "token": "x"}, "subscription"),
        ({"user_id": "u", "channel": "sms", "token": "x"}, "device.channel"),
        ({"user_id": "u", "channel": "webhook", "token": "ftp://x"}, "http(s) URL"),
        (
            {
                "user_id": "u",
                "channel": "webpush",
                "subscription": {**sub, "keys": {"p256dh": AUTH, "auth": AUTH}},
            },
            "65 bytes",
        ),
    ]:
        with pytest.raises(InvalidInput, match=words.replace("(", r"\(").replace(")", r"\)")):
            parse_device(bad, guard=GUARD)


def test_preferences_validate_timezone_locale_and_quiet_hours() -> None:
    prefs = parse_preferences(
        {"user_id": "u", "timezone": "Europe/Berlin", "locale": "de-DE",
         "quiet_hours": {"start": "22:00", "end": "07:30"},
         "consent": {"marketing": {"*": True, "webhook": False}}}
    )  # fmt: skip
    assert prefs.quiet_hours is not None and prefs.quiet_hours.start == "22:00"
    for bad, words in [
        ({"user_id": "u", "timezone": "Mars/Olympus"}, "unknown IANA timezone"),
        ({"user_id": "u", "quiet_hours": {"start": "25:00", "end": "07:00"}}, "HH:MM"),
        ({"user_id": "u", "consent": {"spam": {"*": True}}}, "preferences.consent"),
    ]:
        with pytest.raises(InvalidInput, match=words):
            parse_preferences(bad)
