"""Coupons: pools and offers (config), issuing against budgets, checkout, import.

| module | what it holds |
|---|---|
| `config.py` | `CouponPool` (`[[coupon_pools]]`), `CouponSpec` (a rule's or campaign's offer) |
| `codes.py` | a code's canonical form; the shop's code files read row by row |
| `ledger.py` | `Coupons`: issue (one Lua step per message), check, redeem, expire, status |
| `pool_import.py` | `pushrec coupons import`: a shop's codes into an imported pool |
"""

from worker.coupons.config import CouponPool, CouponSpec, check_pools
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
