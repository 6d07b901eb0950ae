"""The Lua scripts of `worker/lua/`, registered once per Redis client."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import redis
from redis.commands.core import Script


def _source(name: str) -> str:
    return resources.files("worker").joinpath("lua", f"{name}.lua").read_text()


@dataclass(frozen=True)
class Scripts:
    apply_event: Script
    upsert_item: Script
    set_preferences: Script
    delayed_claim: Script
    delayed_ack: Script
    contact_reserve: Script
    deactivate_device: Script
    claim_device: Script

    @classmethod
    def register(cls, client: redis.Redis) -> Scripts:
        return cls(
            apply_event=client.register_script(_source("apply_event")),
            upsert_item=client.register_script(_source("upsert_item")),
            set_preferences=client.register_script(_source("set_preferences")),
            delayed_claim=client.register_script(_source("delayed_claim")),
            delayed_ack=client.register_script(_source("delayed_ack")),
            contact_reserve=client.register_script(_source("contact_reserve")),
            deactivate_device=client.register_script(_source("deactivate_device")),
            claim_device=client.register_script(_source("claim_device")),
        )
