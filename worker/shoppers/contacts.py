"""Where and how a shopper may be reached: devices and contact preferences."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from worker.shoppers.contact_inputs import DeviceRegistration, DeviceRemoval, Preferences
from worker.shoppers.snapshot import DeviceRecord, ShopperReads
from worker.store.keys import Keys
from worker.store.scripts import Scripts

MAX_DEVICES_PER_USER = 20
# A registration reads the owner again each time another registration moved the device
# first; running out takes that many of them landing within its few round trips.
_MOVE_TRIES = 20


def device_id(channel: str, address: str) -> str:
    """Stable id of a device: the same token registered twice is one device."""
    return hashlib.sha256(f"{channel}\n{address}".encode()).hexdigest()[:24]


@dataclass(frozen=True)
class DeviceOutcome:
    device_id: str
    moved_from: str | None = None  # the user who held this device before, if another


class Contacts:
    def __init__(self, client: redis.Redis, keys: Keys, scripts: Scripts, ttl_s: int) -> None:
        self._client = client
        self._keys = keys
        self._scripts = scripts
        self._ttl_s = ttl_s

    def register(self, reg: DeviceRegistration, now: float) -> DeviceOutcome:
        """Add or refresh a device; a token moves away from any user who held it before."""
        did = device_id(reg.channel, reg.address)
        record: DeviceRecord = {
            "channel": reg.channel,
            "registered_at": reg.ts if reg.ts is not None else now,
            "active": True,
        }
        if reg.subscription is not None:
            record["subscription"] = reg.subscription.model_dump(by_alias=True, exclude_none=True)
        else:
            record["token"] = reg.address
        devices_key = self._keys.user(reg.user_id).devices
        moved_from = self._move(did, reg.user_id, json.dumps(record, separators=(",", ":")))
        self._evict_oldest(devices_key, reg.user_id)
        return DeviceOutcome(device_id=did, moved_from=moved_from)

    def _move(self, did: str, user_id: str, record: str) -> str | None:
        """Own and list device `did` under `user_id`, taking it off its previous owner's
        list, in one script (`register_device.lua`); returns that previous owner, if
        another. The script names the previous owner's hash, so the owner is read first
        and read again whenever another registration moved the device in between."""
        owner_key = self._keys.device_owner(did)
        own_list = self._keys.user(user_id).devices
        seen: str = self._client.get(owner_key) or ""  # type: ignore[assignment]
        for _ in range(_MOVE_TRIES):
            previous_list = self._keys.user(seen).devices if seen else own_list
            done, current = self._scripts.register_device(
                keys=[owner_key, own_list, previous_list],
                args=[user_id, seen, did, record, self._ttl_s],
            )
            if int(done):
                return current if current and current != user_id else None
            seen = current
        # transient (store/errors.py): the task backs off and registers again
        raise redis.exceptions.TryAgainError(f"device {did}: owner changed {_MOVE_TRIES} times")

    def _evict_oldest(self, devices_key: str, user_id: str) -> None:
        devices: dict[str, str] = self._client.hgetall(devices_key)  # type: ignore[assignment]
        if len(devices) <= MAX_DEVICES_PER_USER:
            return
        by_age = sorted(
            devices.items(),
            key=lambda kv: json.loads(kv[1])["registered_at"],
        )
        stale = [did for did, _ in by_age[: len(by_age) - MAX_DEVICES_PER_USER]]
        self._client.hdel(devices_key, *stale)
        for did in stale:  # erasure finds owner keys through the devices hash only
            self._release(did, user_id)

    def unregister(self, removal: DeviceRemoval) -> bool:
        did = device_id(removal.channel, removal.address)
        removed = int(self._client.hdel(self._keys.user(removal.user_id).devices, did))
        self._release(did, removal.user_id)
        return removed > 0

    def _release(self, did: str, user_id: str) -> bool:
        """Delete the device's owner key if `user_id` holds it; True if it did."""
        released = self._scripts.release_device(keys=[self._keys.device_owner(did)], args=[user_id])
        return bool(released)

    def release_all(self, user_id: str) -> int:
        """Release every device of `user_id` (erasure); returns how many they held."""
        return sum(self._release(did, user_id) for did in self.devices(user_id))

    def deactivate(
        self,
        user_id: str,
        device_id: str,
        invalid_since: float | None,
        reason: str,
        pipe: redis.client.Pipeline,
    ) -> None:
        """Mark a device inactive after its gateway said it is gone (in `pipe`). With
        `invalid_since` (APNs 410's timestamp), a device registered again after that
        time stays active. The reply is 1 if it was deactivated."""
        self._scripts.deactivate_device(
            keys=[self._keys.user(user_id).devices],
            args=[device_id, "" if invalid_since is None else repr(invalid_since), reason],
            client=pipe,
        )

    def owners(self, device_ids: Sequence[str], pipe: redis.client.Pipeline) -> None:
        """Queue in `pipe` a read of who owns each device: one reply per device, the
        user id or None (the owner key expired or was released)."""
        for did in device_ids:
            pipe.get(self._keys.device_owner(did))

    def drop_moved(
        self, user_id: str, device_id: str, registered_at: float, pipe: redis.client.Pipeline
    ) -> None:
        """Take a device another shopper owns off `user_id`'s list (in `pipe`), unless
        `user_id` registered it again after `registered_at` (as read)."""
        self._scripts.drop_moved_device(
            keys=[self._keys.user(user_id).devices],
            args=[device_id, repr(float(registered_at))],
            client=pipe,
        )

    def devices(self, user_id: str) -> dict[str, DeviceRecord]:
        return ShopperReads.of("devices").read(self._client, self._keys, user_id).devices

    def set_preferences(self, prefs: Preferences, now: float) -> int:
        """Apply a partial update; returns how many fields changed (older ones are ignored)."""
        fields: list[str] = []
        for purpose, by_channel in (prefs.consent or {}).items():
            for channel, granted in by_channel.items():
                fields += [f"consent:{purpose}:{channel}", "1" if granted else "0"]
        for name in ("timezone", "locale"):
            value = getattr(prefs, name)
            if value is not None:
                fields += [name, value]
        if "quiet_hours" in prefs.model_fields_set:
            quiet = prefs.quiet_hours
            fields += ["quiet_hours", f"{quiet.start}-{quiet.end}" if quiet else ""]
        if not fields:
            return 0
        ts = prefs.ts if prefs.ts is not None else now
        changed = self._scripts.set_preferences(
            keys=[self._keys.user(prefs.user_id).preferences],
            args=[ts, self._ttl_s, *fields],
        )
        return int(changed)

    def preferences(self, user_id: str) -> dict[str, str]:
        reads = ShopperReads.of("preferences")
        return reads.read(self._client, self._keys, user_id).preferences
