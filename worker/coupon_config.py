"""Coupon pools and offers as the config file declares them.

A pool is where codes come from and what they may cost in all; an offer (`CouponSpec`) is
what a rule or a campaign gives from a pool, with its own optional budget:

    [[coupon_pools]]
    name = "winback"
    source = "generated"          # codes in push/coupons.py's format; or "imported"
    prefix = "WB"                 # generated only: codes start with it
    budget_count = 5000           # codes ever issued from the pool
    budget_value = 2000.0         # their face value, in the shop's currency
    per_shopper = 1               # codes one shopper may hold from the pool

    [[rules]]
    name = "cart_abandoned"
    coupon = { pool = "winback", percent_off = 10, ttl_days = 7, min_basket = 30 }

Face value: an amount offer is worth its amount; a percent offer `percent_off` % of the
basis the issuer passes (a rule: the message's lead item's price). Budgets count every
code issued, redeemed or not: an expired code does not give its share back, so the pool
never promises more than `budget_count` codes or `budget_value` in all.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from push.coupons import ALPHABET

POOL_NAME = r"^[a-z][a-z0-9_]{0,47}$"
DEFAULT_TTL_DAYS = 7


class CouponPool(BaseModel):
    """One `[[coupon_pools]]` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=POOL_NAME)
    source: Literal["generated", "imported"] = "generated"
    prefix: str = Field(default="", max_length=8, description="generated codes start with it")
    budget_count: int = Field(ge=1, description="codes ever issued from the pool")
    budget_value: float | None = Field(
        default=None, gt=0, description="their face value in all (None: no value budget)"
    )
    per_shopper: int = Field(default=1, ge=1, description="codes one shopper may get")

    @model_validator(mode="after")
    def _prefix(self) -> CouponPool:
        if self.prefix and self.source != "generated":
            raise ValueError("prefix: only a generated pool mints codes with a prefix")
        bad = sorted({c for c in self.prefix.upper() if c not in ALPHABET})
        if bad:
            raise ValueError(f"prefix: {''.join(bad)!r} outside the code alphabet {ALPHABET}")
        return self


class CouponSpec(BaseModel):
    """What a rule or campaign gives: a pool, one offer, an expiry, an optional budget of its
    own, and what to do when the budget (pool's or its own) refuses a code."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pool: str = Field(pattern=POOL_NAME)
    percent_off: int | None = Field(default=None, ge=1, le=90)
    amount_off: float | None = Field(default=None, gt=0, le=1e6, allow_inf_nan=False)
    min_basket: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    ttl_days: int | None = Field(default=None, ge=1, le=365)
    expires_at: dt.datetime | None = Field(
        default=None, description="an absolute expiry (ISO-8601 with offset), instead of ttl_days"
    )
    budget_count: int | None = Field(default=None, ge=1, description="this rule's or campaign's")
    budget_value: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    on_refused: Literal["send_without", "suppress"] = Field(
        default="send_without",
        description="a refused issue (budget spent, shopper's limit, pool empty): send the "
        "message without a coupon, or do not send it; either way the refusal is recorded",
    )

    @model_validator(mode="before")
    @classmethod
    def _named_pool(cls, data: Any) -> Any:
        # The offer-only form issued random codes that nothing recorded or budgeted.
        if isinstance(data, dict) and "pool" not in data:
            raise ValueError(
                'a coupon names its pool: coupon = { pool = "<a [[coupon_pools]] name>", '
                "percent_off = 10, ttl_days = 7 } (codes are issued from a pool against its "
                "budget: docs/campaigns.md, Coupons)"
            )
        return data

    @model_validator(mode="after")
    def _one_offer(self) -> CouponSpec:
        if (self.percent_off is None) == (self.amount_off is None):
            raise ValueError("give exactly one offer: percent_off or amount_off")
        if self.ttl_days is not None and self.expires_at is not None:
            raise ValueError("give ttl_days or expires_at, not both")
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            raise ValueError("expires_at needs a UTC offset (2026-12-31T23:59:59Z)")
        return self

    def expiry(self, now: float) -> float:
        """When a code issued at `now` expires (epoch seconds)."""
        if self.expires_at is not None:
            return self.expires_at.timestamp()
        return now + (self.ttl_days or DEFAULT_TTL_DAYS) * 86_400

    def face_cents(self, basis: float) -> int:
        """The face value of one code in hundredths of the currency: the amount, or the
        percentage of `basis` (a price)."""
        if self.amount_off is not None:
            return round(self.amount_off * 100)
        assert self.percent_off is not None
        return round(max(basis, 0.0) * self.percent_off)

    def offer(self) -> dict[str, Any]:
        """The offer as stored with each code and shown at checkout."""
        return {
            "percent_off": self.percent_off,
            "amount_off": self.amount_off,
            "min_basket": self.min_basket,
        }


def check_pools(pools: tuple[CouponPool, ...], specs: dict[str, CouponSpec]) -> None:
    """Pool names unique; every spec (`where` -> spec, e.g. "rules.cart_abandoned") names a
    declared pool. Raises `ValueError` naming the field."""
    names = [p.name for p in pools]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"coupon_pools: pool names must be unique, {dupes} repeat")
    for where, spec in specs.items():
        if spec.pool not in names:
            known = ", ".join(names) or "none declared"
            raise ValueError(
                f"{where}.coupon.pool: no [[coupon_pools]] named {spec.pool!r} ({known})"
            )
