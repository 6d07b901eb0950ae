"""Rules: when to contact whom, declared in the config file.

Each `[[rules]]` table in the TOML file (`PUSHREC_CONFIG`) is one `Rule`. A rule has a
kind (what triggers it and what it re-checks when it fires: `kinds.py`), a delay, a cooldown, the
channels to use in order of preference, a purpose, a holdout share, templates and an
optional coupon: an offer from a `[[coupon_pools]]` pool (`worker/coupon_config.py`),
issued when the message is composed. Without any `[[rules]]`, `DEFAULT_RULES` apply
(none of them gives a coupon: no pool exists until the config declares one).

    [[rules]]
    name = "cart_abandoned"
    kind = "cart_abandoned"
    delay_s = 1800
    cooldown_s = 86400
    holdout_pct = 10
    title = "Still thinking about {{ items[0].title }}?"
    body = "Cart waiting{% if coupon %}: {{ coupon }} takes {{ coupon.percent_off }}%{% endif %}"
    coupon = { pool = "winback", percent_off = 10, ttl_days = 7 }
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from push import TemplateSet
from push.errors import PushError
from worker.coupon_config import CouponSpec

__all__ = ["DEFAULT_RULES", "ChannelName", "CouponSpec", "Rule", "RuleKind", "enabled_rules"]

RuleKind = Literal[
    "cart_abandoned",
    "browse_abandoned",
    "post_purchase",
    "price_drop",
    "back_in_stock",
    "replenish",
    "campaign",  # only as `Campaign.as_rule()`: declared under [[campaigns]]
    "coupon_expiring",
]
ChannelName = Literal["fcm", "apns", "webpush", "webhook"]


def check_channels(value: tuple[str, ...]) -> tuple[str, ...]:
    """A rule's or campaign's channel list: at least one, each at most once."""
    if not value or len(set(value)) != len(value):
        raise ValueError("list each channel at most once, at least one")
    return value


def check_template(value: str | None, info: ValidationInfo) -> str | None:
    """A rule's or campaign's `title`, `body` or `link` compiles (checked at start-up, so
    a typo stops it naming the field, not a firing later)."""
    if value is None:
        return None
    name = info.data.get("name", "?")
    try:
        TemplateSet({name: {"en": {str(info.field_name): value}}})
    except PushError as exc:
        raise ValueError(f"template does not compile: {exc}") from None
    return value


class Rule(BaseModel):
    """One rule. Times in seconds; `holdout_pct` of shoppers never get this rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,47}$")
    kind: RuleKind
    enabled: bool = True
    delay_s: int = Field(default=0, ge=0, le=90 * 86_400)
    cooldown_s: int = Field(default=86_400, ge=0)
    channels: tuple[ChannelName, ...] = ("apns", "fcm", "webpush", "webhook")
    purpose: Literal["marketing", "transactional"] = "marketing"
    holdout_pct: float = Field(default=0.0, ge=0.0, le=100.0)
    items: int = Field(default=3, ge=1, le=10, description="items to recommend")
    title: str = Field(min_length=1, max_length=500)
    body: str = Field(min_length=1, max_length=2000)
    link: str | None = Field(default=None, description="template of the deep link")
    coupon: CouponSpec | None = None
    ttl_s: int = Field(default=86_400, ge=0, le=28 * 86_400)
    # kind-specific conditions
    min_views: int = Field(default=3, ge=1, description="browse_abandoned: views in a category")
    window_s: int = Field(default=3600, ge=60, description="browse_abandoned: within this")
    min_drop_pct: float = Field(default=10.0, gt=0, lt=100, description="price_drop")
    interest_days: int = Field(
        default=14, ge=1, le=365, description="price_drop, back_in_stock: viewed or carted within"
    )
    min_purchases: int = Field(default=2, ge=2, description="replenish: purchases to learn from")
    lead_s: int = Field(
        default=86_400,
        ge=0,
        description="replenish: remind this early; coupon_expiring: this long before expiry",
    )

    @model_validator(mode="after")
    def _reminder_issues_nothing(self) -> Rule:
        if self.kind == "coupon_expiring" and self.coupon is not None:
            raise ValueError("coupon: a coupon_expiring rule reminds of a code, it issues none")
        return self

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_channels(value)

    _templates = field_validator("title", "body", "link")(check_template)


def enabled_rules(rules: tuple[Rule, ...]) -> dict[str, Rule]:
    """Name -> the first enabled rule of that name (looked up once per job and message)."""
    return {r.name: r for r in reversed(rules) if r.enabled}


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(
        name="cart_abandoned",
        kind="cart_abandoned",
        delay_s=1800,
        holdout_pct=10,
        title="Still thinking about {{ items[0].title }}?",
        body="{{ items | length }} item{{ 's' if items | length > 1 else '' }} "
        "in your cart{% if coupon %}: code {{ coupon }} takes {{ coupon.percent_off }}% off"
        "{% endif %}.",
    ),
    Rule(
        name="browse_abandoned",
        kind="browse_abandoned",
        delay_s=3600,
        holdout_pct=10,
        title="More {{ category }} you might like",
        body="Because you looked at {{ reason_item.title }}: {{ items[0].title }} and more.",
    ),
    Rule(
        name="post_purchase",
        kind="post_purchase",
        delay_s=86_400,
        holdout_pct=10,
        title="Goes well with your {{ trigger.title }}",
        body="{{ items[0].title }}{% if items | length > 1 %} and {{ items[1].title }}{% endif %}.",
    ),
    Rule(
        name="price_drop",
        kind="price_drop",
        cooldown_s=3600,
        title="Price drop: {{ trigger.title }}",
        body="Now {{ trigger.price | money(currency) }}, down from "
        "{{ trigger.old_price | money(currency) }}.",
    ),
    Rule(
        name="back_in_stock",
        kind="back_in_stock",
        cooldown_s=3600,
        title="Back in stock: {{ trigger.title }}",
        body="It's back. Get yours before it sells out again.",
    ),
    Rule(
        name="replenish",
        kind="replenish",
        title="Time to restock {{ trigger.title }}?",
        body="You usually buy it about every {{ interval_days }} days.",
    ),
)
