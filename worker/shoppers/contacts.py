"""Where and how a shopper may be reached: devices and contact preferences."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from worker.shoppers.contact_inputs import DeviceRegistration, DeviceRemoval, Preferences
from worker.shoppers.snapshot import DeviceRecord, ShopperReads
from worker.store.client import StatePipeline, StateRedis
from worker.store.keys import Keys
from worker.store.scripts import Scripts

MAX_DEVICES_PER_USER = 20


def device_id(channel: str, address: str) -> str:
    """Stable id of a device: the same token registered twice is one device."""
    return hashlib.sha256(f"{channel}\n{address}".encode()).hexdigest()[:24]


@dataclass(frozen=True)
class DeviceOutcome:
    device_id: str
    moved_from: str | None = None  # the user who held this device before, if another


class Contacts:
    def __init__(self, client: StateRedis, keys: Keys, scripts: Scripts, ttl_s: int) -> None:
        self._client = client
        self._keys = keys
        self._scripts = scripts
        self._ttl_s = ttl_s

    def register(self, reg: DeviceRegistration, now: float) -> DeviceOutcome:
        """Add or refresh a device; a token moves away from any user who held it before
        (`_move`)."""
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
        list; returns that previous owner, if another.

        The owner key (`Keys.device_owner`) is the truth and the shoppers' `devices`
        hashes follow it; they live in different slots (a Redis Cluster allows no script
        across them), so the move is four idempotent steps, each atomic in its slot:
        1. swap the owner key to `user_id` (SET … GET), learning the previous owner;
        2. list the device under `user_id`;
        3. take it off the previous owner's list (`_unlist`);
        4. read the owner again: if another registration took the device meanwhile, take
           it off our own list (its registration lists it under its shopper).
        A registration that stops between steps is redone whole by its task's retry.
        Two racing registrations leave the device owned by the later swap and listed
        under that owner only; with three or more, a former owner may keep a stale
        listing, which delivery drops on finding the owner key names another shopper
        (`Contacts.owners`, `drop_moved`)."""
        owner_key = self._keys.device_owner(did)
        own_list = self._keys.user(user_id).devices
        previous: str = self._client.set(owner_key, user_id, ex=self._ttl_s, get=True) or ""  # type: ignore[assignment]
        listing = self._client.pipeline(transaction=True)  # one slot: the shopper's
        listing.hset(own_list, did, record)
        listing.expire(own_list, self._ttl_s)
        listing.execute()
        if previous and previous != user_id:
            self._unlist(previous, did)
        if self._client.get(owner_key) != user_id:
            self._unlist(user_id, did)
        return previous if previous and previous != user_id else None

    def _unlist(self, user_id: str, did: str) -> None:
        """Take `did` off `user_id`'s list unless they own it: remove, then read the
        owner; if it is `user_id` (they registered it again in between), put the taken
        record back, unless their registration has listed a newer one already."""
        devices = self._keys.user(user_id).devices
        taken = self._scripts.unlist_device(keys=[devices], args=[did])
        if not taken or self._client.get(self._keys.device_owner(did)) != user_id:
            return
        restore = self._client.pipeline(transaction=True)  # one slot: the shopper's
        restore.hsetnx(devices, did, taken)
        restore.expire(devices, self._ttl_s)
        restore.execute()

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
        pipe: StatePipeline,
    ) -> None:
        """Mark a device inactive after its gateway said it is gone (in `pipe`). With
        `invalid_since` (APNs 410's timestamp), a device registered again after that
        time stays active. The reply is 1 if it was deactivated."""
        since = "" if invalid_since is None else repr(invalid_since)
        Scripts.call_in(
            pipe,
            self._scripts.deactivate_device,
            [self._keys.user(user_id).devices],
            [device_id, since, reason],
        )

    def owners(self, device_ids: Sequence[str], pipe: StatePipeline) -> None:
        """Queue in `pipe` a read of who owns each device: one reply per device, the
        user id or None (the owner key expired or was released)."""
        for did in device_ids:
            pipe.get(self._keys.device_owner(did))

    def drop_moved(
        self, user_id: str, device_id: str, registered_at: float, pipe: StatePipeline
    ) -> None:
        """Take a device another shopper owns off `user_id`'s list (in `pipe`), unless
        `user_id` registered it again after `registered_at` (as read)."""
        Scripts.call_in(
            pipe,
            self._scripts.drop_moved_device,
            [self._keys.user(user_id).devices],
            [device_id, repr(float(registered_at))],
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
