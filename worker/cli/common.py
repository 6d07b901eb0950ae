"""Helpers shared by the CLI sub-commands."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

from worker.settings import Settings, SettingsError


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"pushrec: {message}", file=sys.stderr)
    raise SystemExit(code)


def load_settings() -> Settings:
    """The validated settings, or exit 2 with the reasons."""
    try:
        return Settings.load()
    except SettingsError as exc:
        fail(str(exc))


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))
