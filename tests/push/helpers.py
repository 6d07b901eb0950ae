"""Small builders shared by the push tests."""

from __future__ import annotations

import uuid
from typing import Any

from push.messages import Channel, Device, Message


def fcm_token() -> str:
    return "fcm-" + uuid.uuid4().hex + uuid.uuid4().hex


def apns_token() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def message(channel: Channel, token: str, **overrides: Any) -> Message:
    fields: dict[str, Any] = {
        "id": "m" + uuid.uuid4().hex[:16],
        "device": Device(channel, token),
        "title": "Still thinking about it?",
        "body": "Your cart misses you",
        "link": "https://shop.example/cart?ref=push",
    }
    fields.update(overrides)
    return Message(**fields)
