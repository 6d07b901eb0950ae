"""Campaigns: a message to a segment on a schedule, declared beside the rules.

Each `[[campaigns]]` table is one `Campaign`. A campaign fires as a rule of kind
`campaign` (`as_rule`): the same templates, item selection, contact policy, outbox,
delivery, audit and stats as a real-time rule, under the campaign's name (so a campaign
and a rule may not share one). What is its own: the segment, the cron schedule, the
send window, the pace and the end date (`worker/campaigning/`).

    [[campaigns]]
    name = "winback"
    segment = "lapsed_regulars"
    schedule = "0 10 * * 2"        # Tuesdays 10:00 ...
    local_time = true              # ... in each shopper's own timezone
    send_window = "09:00-20:00"    # shopper's local time; outside it the send waits
    rate_per_s = 50                # messages per second, across all workers
    holdout_pct = 10
    ends = 2027-06-30T00:00:00Z
    title = "We kept some picks for you"
    body = "{{ items[0].title }}{% if coupon %}, and {{ coupon }} takes 10% off{% endif %}."
    coupon = { percent_off = 10, ttl_days = 7 }
"""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from worker.rules import ChannelName, CouponSpec, Rule, check_channels, check_template

# A cron that fires less often than this (or never) is refused: a typo like "0 0 30 2 *".
_NEVER_AFTER = datetime(2000, 1, 1, tzinfo=UTC)


class Campaign(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,47}$")
    segment: str
    enabled: bool = True
    schedule: str | None = Field(
        default=None, description="crontab (UTC, or local with local_time); unset: by hand"
    )
    local_time: bool = Field(default=False, description="the cron in each shopper's timezone")
    send_window: str | None = Field(
        default=None, description="'HH:MM-HH:MM' in the shopper's timezone; may wrap midnight"
    )
    rate_per_s: float | None = Field(default=None, gt=0, le=100_000)
    grace_s: int = Field(
        default=3600, ge=0, description="a run missed by downtime starts late within this"
    )
    ends: datetime | None = Field(default=None, description="no run and no send after")
    channels: tuple[ChannelName, ...] = ("apns", "fcm", "webpush", "webhook")
    purpose: Literal["marketing", "transactional"] = "marketing"
    holdout_pct: float = Field(default=0.0, ge=0.0, le=100.0)
    cooldown_s: int = Field(default=0, ge=0, description="since this campaign's last message")
    items: int = Field(default=3, ge=1, le=10)
    title: str = Field(min_length=1, max_length=500)
    body: str = Field(min_length=1, max_length=2000)
    link: str | None = None
    coupon: CouponSpec | None = None
    ttl_s: int = Field(default=86_400, ge=0, le=28 * 86_400)

    @field_validator("schedule")
    @classmethod
    def _fires(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from apscheduler.triggers.cron import CronTrigger

        trigger = CronTrigger.from_crontab(value, timezone="UTC")  # ValueError: the reason
        if trigger.get_next_fire_time(None, _NEVER_AFTER) is None:
            raise ValueError(f"cron {value!r} never fires")
        return value

    @field_validator("send_window")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        if value is None:
            return None
        start, _, end = value.partition("-")
        try:
            if time.fromisoformat(start) == time.fromisoformat(end):
                raise ValueError("send_window is empty (start equals end)")
        except ValueError as exc:
            raise ValueError(f"send_window {value!r}: {exc}; use 'HH:MM-HH:MM'") from None
        return value

    @field_validator("ends")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_channels(value)

    _templates = field_validator("title", "body", "link")(check_template)

    def ended(self, now: float) -> bool:
        return self.ends is not None and now >= self.ends.timestamp()

    def as_rule(self) -> Rule:
        """The rule firing, delivery and stats see: kind `campaign`, the campaign's name."""
        return Rule(
            name=self.name,
            kind="campaign",
            enabled=self.enabled,
            cooldown_s=self.cooldown_s,
            channels=self.channels,
            purpose=self.purpose,
            holdout_pct=self.holdout_pct,
            items=self.items,
            title=self.title,
            body=self.body,
            link=self.link,
            coupon=self.coupon,
            ttl_s=self.ttl_s,
        )
