"""Small builders shared by the push tests."""

from __future__ import annotations

import socket
import uuid
from typing import Any

from push.messages import Channel, Device, Message
from push.ssrf import ResolvedAddress, Resolver


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


def resolver(answers: dict[str, list[str] | int]) -> Resolver:
    """A `push.ssrf.Resolver` answering from `answers`: host -> addresses, or -> the
    getaddrinfo error number it fails with (``socket.EAI_AGAIN``). Other hosts: no such name."""

    async def resolve(host: str, port: int) -> list[ResolvedAddress]:
        answer = answers.get(host, socket.EAI_NONAME)
        if isinstance(answer, int):
            raise socket.gaierror(answer, f"scripted DNS failure {answer}")
        return [ResolvedAddress(socket.AF_INET6 if ":" in a else socket.AF_INET, a) for a in answer]

    return resolve
