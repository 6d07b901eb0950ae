"""Settings: environment and TOML, validated once, secrets hidden."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from push.config import GatewayConfig
from worker.delivery.gateway_config import LIBRARY_ONLY, gateway_config
from worker.settings import Settings, SettingsError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("PUSHREC_"):
            monkeypatch.delenv(name)


def test_environment_sets_fields_and_broker_defaults_to_redis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PUSHREC_REDIS_URL", "redis://:hunter2@cache:6379/2")
    monkeypatch.setenv("PUSHREC_RECENT_ITEMS_MAX", "10")
    monkeypatch.setenv("PUSHREC_DESTINATION_ALLOWED_HOSTS", "a.example, b.example")
    settings = Settings.load()
    assert settings.recent_items_max == 10
    assert settings.effective_broker_url == "redis://:hunter2@cache:6379/2"
    assert settings.destination_allowed_hosts == ["a.example", "b.example"]


def test_former_webhook_allowlist_joins_the_destination_allowlist(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PUSHREC_DESTINATION_ALLOWED_HOSTS", "a.example")
    monkeypatch.setenv("PUSHREC_WEBHOOK_ALLOWED_HOSTS", "hooks.internal")
    assert Settings.load().destination_allowed_hosts == ["a.example", "hooks.internal"]


def test_an_allowlisted_host_no_dns_could_hold_stops_the_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PUSHREC_DESTINATION_ALLOWED_HOSTS", "ok.example, bad..host")
    with pytest.raises(SettingsError, match="PUSHREC_DESTINATION_ALLOWED_HOSTS"):
        Settings.load()


def test_repr_hides_passwords_and_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUSHREC_REDIS_URL", "redis://user:hunter2@cache:6379/2")
    monkeypatch.setenv("PUSHREC_WEBHOOK_SECRET", "whsec_abc,whsec_def")
    settings = Settings.load()
    shown = repr(settings) + str(settings)
    assert "hunter2" not in shown and "whsec_abc" not in shown
    assert "user:***@cache" in shown
    assert settings.webhook_secrets == ["whsec_abc", "whsec_def"]


def test_toml_file_is_read_and_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "pushrec.toml"
    config.write_text('key_prefix = "shop1"\nrecent_items_max = 7\n')
    monkeypatch.setenv("PUSHREC_CONFIG", str(config))
    monkeypatch.setenv("PUSHREC_RECENT_ITEMS_MAX", "9")
    settings = Settings.load()
    assert (settings.key_prefix, settings.recent_items_max) == ("shop1", 9)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"PUSHREC_REDIS_URL": "http://x"}, "PUSHREC_REDIS_URL"),
        ({"PUSHREC_KEY_PREFIX": "a{b}"}, "PUSHREC_KEY_PREFIX"),
        ({"PUSHREC_RECENT_ITEMS_MAX": "lots"}, "PUSHREC_RECENT_ITEMS_MAX"),
        ({"PUSHREC_TASK_TIME_LIMIT_S": "400"}, "below visibility_timeout_s"),
        ({"PUSHREC_QUEUE_PUSH": "activity"}, "must differ"),
        ({"PUSHREC_INDEX_STORE": "s3://"}, "PUSHREC_INDEX_STORE.*s3://bucket"),
        ({"PUSHREC_INDEX_STORE": "s3://b/x/../y"}, "PUSHREC_INDEX_STORE.*'\\.\\.'"),
        ({"PUSHREC_S3_ENDPOINT_URL": "seaweedfs:8333"}, "PUSHREC_S3_ENDPOINT_URL"),
    ],
)
def test_invalid_values_stop_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], words: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=words):
        Settings.load()


def test_unknown_key_in_toml_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "pushrec.toml"
    config.write_text("recent_item_max = 7\n")
    monkeypatch.setenv("PUSHREC_CONFIG", str(config))
    with pytest.raises(SettingsError, match="recent_item_max"):
        Settings.load()


def test_every_gateway_field_is_a_setting_mapped_by_its_name(tmp_path: Path) -> None:
    settings = Settings.load(
        fcm_url="https://fcm.test",
        apns_key_file=tmp_path / "key.p8",
        apns_key_id="K",
        apns_team_id="T",
        apns_topic="shop.app",
        webhook_secret="whsec_a,whsec_b",
        destination_allowed_hosts="hooks.test",
    )
    config = gateway_config(settings)
    for field in fields(GatewayConfig):
        if field.name not in LIBRARY_ONLY:
            assert field.name in Settings.model_fields or hasattr(Settings, field.name)
    assert config.fcm_url == "https://fcm.test" and config.apns_topic == "shop.app"
    assert config.webhook_secrets == ("whsec_a", "whsec_b")
    assert config.destination_allowed_hosts == ("hooks.test",)
    assert gateway_config(Settings.load()).apns_url == GatewayConfig().apns_url
