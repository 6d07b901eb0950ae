"""Synthetic devices and preferences for the shoppers of a replay, clearly labelled: a
history file has no devices, and a demo must not look like real people's phones.

Seeded by shopper id, so two replays of one file give every shopper the same device and
preferences. Shares (of shoppers): 60% FCM, 25% APNs, 15% webhook; 15% never gave
marketing consent; 30% have quiet hours 21:30-08:00 in their time zone (from their country
when known); 3% of FCM and APNs tokens are gone (the local gateway answers them as
unregistered, as a phone that dropped the app would).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

SYNTHETIC = "synthetic"
_TIMEZONES = {
    "United Kingdom": "Europe/London", "EIRE": "Europe/Dublin", "Channel Islands": "Europe/London",
    "Germany": "Europe/Berlin", "France": "Europe/Paris", "Spain": "Europe/Madrid",
    "Belgium": "Europe/Brussels", "Switzerland": "Europe/Zurich", "Portugal": "Europe/Lisbon",
    "Italy": "Europe/Rome", "Netherlands": "Europe/Amsterdam", "Sweden": "Europe/Stockholm",
    "Norway": "Europe/Oslo", "Denmark": "Europe/Copenhagen", "Finland": "Europe/Helsinki",
    "Austria": "Europe/Vienna", "Poland": "Europe/Warsaw", "Greece": "Europe/Athens",
    "Cyprus": "Asia/Nicosia", "Lithuania": "Europe/Vilnius", "Iceland": "Atlantic/Reykjavik",
    "Australia": "Australia/Sydney", "Japan": "Asia/Tokyo", "Singapore": "Asia/Singapore",
    "USA": "America/New_York", "Canada": "America/Toronto", "Brazil": "America/Sao_Paulo",
    "Israel": "Asia/Jerusalem", "Lebanon": "Asia/Beirut", "Bahrain": "Asia/Bahrain",
    "United Arab Emirates": "Asia/Dubai", "Saudi Arabia": "Asia/Riyadh",
}  # fmt: skip


@dataclass(frozen=True)
class SyntheticShopper:
    user_id: str
    channel: str  # fcm, apns or webhook
    target: str  # token or webhook URL
    consent: bool
    timezone: str
    quiet_hours: bool
    gone: bool  # the gateway answers this token as unregistered

    def device(self) -> dict[str, Any]:
        """`pushrec.register_device` kwargs."""
        key = "token"
        return {"user_id": self.user_id, "channel": self.channel, key: self.target}

    def preferences(self) -> dict[str, Any]:
        """`pushrec.set_preferences` kwargs; no consent recorded for some shoppers, so
        the default (no marketing) applies to them."""
        prefs: dict[str, Any] = {"user_id": self.user_id, "timezone": self.timezone,
                                 "locale": "en-GB"}  # fmt: skip
        if self.consent:
            prefs["consent"] = {"marketing": {"*": True}, "transactional": {"*": True}}
        if self.quiet_hours:
            prefs["quiet_hours"] = {"start": "21:30", "end": "08:00"}
        return prefs

    def as_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id, "channel": self.channel, "consent": self.consent,
            "timezone": self.timezone, "quiet_hours": self.quiet_hours, "gone": self.gone,
        }  # fmt: skip


def synthetic_shopper(user_id: str, country: str, webhook_base: str) -> SyntheticShopper:
    """The synthetic device and preferences of `user_id` (same id, same answer)."""
    seed = int.from_bytes(hashlib.sha256(f"{SYNTHETIC}:{user_id}".encode()).digest()[:8], "big")
    rng = random.Random(seed)
    pick = rng.random()
    tag = hashlib.sha256(f"{user_id}:{seed}".encode()).hexdigest()
    if pick < 0.60:
        channel, target = "fcm", f"{SYNTHETIC}-fcm-{user_id}-{tag[:16]}"
    elif pick < 0.85:
        channel, target = "apns", tag  # APNs tokens are hex: the label is in the report
    else:
        channel, target = "webhook", f"{webhook_base}/hooks/{SYNTHETIC}-{user_id}"
    return SyntheticShopper(
        user_id=user_id,
        channel=channel,
        target=target,
        consent=rng.random() >= 0.15,
        timezone=_TIMEZONES.get(country, "Europe/London"),
        quiet_hours=rng.random() < 0.30,
        gone=channel != "webhook" and rng.random() < 0.03,
    )
