"""Coupons: issuing against budgets, checkout, import, reminders. The pools and offers
as configured (`CouponPool`, `CouponSpec`) live in the kernel (`worker/coupon_config.py`:
settings and rules read them) and are re-exported here.

| module | what it holds |
|---|---|
| `codes.py` | a code's canonical form; the shop's code files read row by row |
| `ledger.py` | `Coupons`: issue (one Lua step per message), check, redeem, expire, status |
| `pool_import.py` | `pushrec coupons import`: a shop's codes into an imported pool |
| `reminders.py` | the `coupon_expiring` rules' firings, parked at each issue |
"""

from worker.coupon_config import CouponPool, CouponSpec, check_pools
from worker.coupons.ledger import Coupons, IssuedCoupon, Refusal
from worker.coupons.pool_import import ImportReport, import_codes

__all__ = [
    "CouponPool",
    "CouponSpec",
    "Coupons",
    "ImportReport",
    "IssuedCoupon",
    "Refusal",
    "check_pools",
    "import_codes",
]
