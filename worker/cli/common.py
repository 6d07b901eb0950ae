"""Helpers shared by the CLI sub-commands."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, NoReturn

from worker.settings import Settings, SettingsError
from worker.store.embedded import EmbeddedRedis, EmbeddedRedisError


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"pushrec: {message}", file=sys.stderr)
    raise SystemExit(code)


def load_settings() -> Settings:
    """The validated settings, or exit 2 with the reasons."""
    try:
        return Settings.load()
    except SettingsError as exc:
        fail(str(exc))


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Two INFO lines per second from the scheduler's poll job say nothing an operator needs.
    quiet = max(logging.WARNING, logging.getLogger().level)
    logging.getLogger("apscheduler.executors").setLevel(quiet)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def load_settings_with_redis() -> tuple[Settings, EmbeddedRedis | None]:
    """Settings with a Redis URL: the configured one, else an embedded server's
    (started, or joined if one already serves the state directory)."""
    settings = load_settings()
    if settings.redis_url is not None:
        return settings, None
    try:
        server = EmbeddedRedis.start(settings.state_dir)
    except EmbeddedRedisError as exc:
        fail(str(exc))
    return settings.with_redis(server.url), server
