"""Assembling gateways from configuration: partial settings, wrong settings."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from push.config import GatewayConfig, open_gateways
from push.errors import ConfigError
from push.messages import Channel
from push.result import Outcome
from tests.push.helpers import fcm_token, message


def test_half_configured_apns_is_refused_at_start() -> None:
    with pytest.raises(ConfigError):
        GatewayConfig(apns_key_file=Path("k.p8"), apns_key_id="K")


def test_unreadable_key_file_is_refused_at_start(tmp_path: Path) -> None:
    config = GatewayConfig(
        apns_key_file=tmp_path / "missing.p8",
        apns_key_id="K",
        apns_team_id="T",
        apns_topic="com.example",
    )

    async def go() -> None:
        async with open_gateways(config):
            pass

    with pytest.raises(ConfigError):
        asyncio.run(go())


def test_unconfigured_channel_fails_the_message_not_the_process() -> None:
    async def go():  # type: ignore[no-untyped-def]
        async with open_gateways(GatewayConfig()) as router:
            assert router.channels == frozenset()
            return await router.send(message(Channel.FCM, fcm_token()))

    result = asyncio.run(go())
    assert result.outcome is Outcome.FAILED and result.reason == "fcm:not_configured"


def test_bad_webhook_secret_is_refused_at_start() -> None:
    async def go() -> None:
        async with open_gateways(GatewayConfig(webhook_secrets=("whsec_%%%",))):
            pass

    with pytest.raises(ConfigError):
        asyncio.run(go())
