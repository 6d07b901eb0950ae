"""Right to erasure: remove every trace of one shopper that pushrec keeps."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from worker.shoppers.contacts import Contacts
from worker.store.keys import Keys

_SCAN_CHUNK = 5_000

EntryFilter = Callable[[dict[str, str]], bool]


@dataclass
class ErasureReport:
    user_id: str
    keys_removed: list[str] = field(default_factory=list)
    devices_released: int = 0
    log_entries_removed: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "user_id": self.user_id,
            "keys_removed": self.keys_removed,
            "devices_released": self.devices_released,
            "log_entries_removed": self.log_entries_removed,
        }


def forget_user(client: redis.Redis, keys: Keys, contacts: Contacts, user_id: str) -> ErasureReport:
    """Delete the shopper's keys and the messages decided for them, release their devices,
    and strip their entries from the interaction and rejected logs. Safe to repeat; the
    report says what this call removed."""
    report = ErasureReport(user_id=user_id)
    for raw in client.lrange(keys.user(user_id).decisions, 0, -1):
        mid = json.loads(raw).get("message_id")
        if mid:
            k = keys.message(mid)
            report.keys_removed += [
                key for key in (k.record, k.state, k.attempts, k.outcome) if client.delete(key)
            ]
    for did in contacts.devices(user_id):
        owner_key = keys.device_owner(did)
        if client.get(owner_key) == user_id:
            client.delete(owner_key)
            report.devices_released += 1
    for key in keys.user(user_id).all():
        if client.delete(key):
            report.keys_removed.append(key)
    report.log_entries_removed = {
        "interactions": _strip_stream(client, keys.interaction_log, _is_user_entry(user_id)),
        "rejected": _strip_stream(client, keys.rejected_log, _mentions_user(user_id)),
    }
    return report


def _is_user_entry(user_id: str) -> EntryFilter:
    return lambda fields: fields.get("user_id") == user_id


def _mentions_user(user_id: str) -> EntryFilter:
    needle = json.dumps(user_id)

    def matches(fields: dict[str, str]) -> bool:
        payload = fields.get("payload", "")
        return f'"user_id": {needle}' in payload or f'"user_id":{needle}' in payload

    return matches


def _strip_stream(client: redis.Redis, key: str, matches: EntryFilter) -> int:
    """XDEL every entry of stream `key` for which `matches(fields)`; returns how many."""
    removed = 0
    start = "-"
    while True:
        rows: list[tuple[str, dict[str, str]]] = client.xrange(  # type: ignore[assignment]
            key, min=start, max="+", count=_SCAN_CHUNK
        )
        if not rows:
            return removed
        doomed = [rid for rid, fields in rows if matches(fields)]
        if doomed:
            removed += int(client.xdel(key, *doomed))
        if len(rows) < _SCAN_CHUNK:
            return removed
        start = "(" + rows[-1][0]
