"""pushrec's settings translated into the push library's gateway configuration."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from push.config import GatewayConfig
from worker.settings import Settings

# GatewayConfig fields that are no setting of pushrec's: they keep the library's default.
LIBRARY_ONLY = frozenset({"max_connections"})


def gateway_config(settings: Settings) -> GatewayConfig:
    """The push library's view of pushrec's settings: each `GatewayConfig` field from the
    setting of the same name (secrets as plain values, lists as tuples)."""
    values: dict[str, Any] = {}
    for field in fields(GatewayConfig):
        if field.name not in LIBRARY_ONLY:
            value = getattr(settings, field.name)
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return GatewayConfig(**values)
