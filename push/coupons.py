"""Coupon codes: unguessable, typable by humans, with a check character.

A code is `length` random symbols from Crockford's base32 alphabet (no I, L, O, U: nothing
to confuse, no accidental words) plus one Luhn mod 32 check symbol, shown in groups of four:
``7KQ2-M9XD-4TGB-R``. 12 symbols carry 60 bits from `secrets`, so guessing is hopeless at
any rate a shop allows. Parsing forgives case, spaces, dashes and the usual confusions
(O->0, I/L->1). Issuing codes against budgets is the worker's job; this module only mints,
formats and validates, and shapes an issued code for templates (`OfferText`).
"""

from __future__ import annotations

import secrets

from push.errors import CouponError

__all__ = [
    "ALPHABET",
    "OfferText",
    "format_coupon",
    "new_coupon",
    "normalize_coupon",
    "validate_coupon",
]

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_INDEX = {symbol: i for i, symbol in enumerate(ALPHABET)}
_CONFUSABLE = str.maketrans({"O": "0", "I": "1", "L": "1"})
_N = len(ALPHABET)


def _check_symbol(payload: str) -> str:
    """Luhn mod N over the payload: catches every single-symbol error and most swaps."""
    factor = 2
    total = 0
    for symbol in reversed(payload):
        addend = factor * _INDEX[symbol]
        factor = 1 if factor == 2 else 2
        total += addend // _N + addend % _N
    return ALPHABET[(_N - total % _N) % _N]


def new_coupon(length: int = 12, *, prefix: str = "") -> str:
    """A fresh formatted code: `prefix` (validated alphabet) + random symbols + check."""
    if length < 6:
        raise ValueError("coupon codes need at least 6 random symbols")
    prefix = normalize_coupon(prefix, check=False) if prefix else ""
    payload = prefix + "".join(secrets.choice(ALPHABET) for _ in range(length))
    return format_coupon(payload + _check_symbol(payload))


def format_coupon(code: str) -> str:
    """Groups of four separated by dashes."""
    raw = normalize_coupon(code, check=False)
    return "-".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def normalize_coupon(text: str, *, check: bool = True) -> str:
    """Upper-case symbols without separators; raises `CouponError` if malformed or if
    `check` and the check symbol is wrong."""
    raw = text.upper().replace("-", "").replace(" ", "").translate(_CONFUSABLE)
    bad = sorted({c for c in raw if c not in _INDEX})
    if bad:
        raise CouponError(f"coupon has characters outside the alphabet: {''.join(bad)}")
    if check:
        if len(raw) < 7:
            raise CouponError("coupon is too short")
        if _check_symbol(raw[:-1]) != raw[-1]:
            raise CouponError("coupon check character does not match (typo?)")
    return raw


def validate_coupon(text: str) -> str:
    """The canonical formatted code for user input `text`, or `CouponError`."""
    return format_coupon(normalize_coupon(text))


class OfferText(str):
    """An issued code as a template sees it: ``{{ coupon }}`` renders the code (what
    templates written before offers existed expect); the offer's facts are attributes:
    ``coupon.code``, ``coupon.percent_off`` or ``coupon.amount_off`` (the other is None),
    ``coupon.currency``, ``coupon.min_basket`` (None: no minimum) and ``coupon.expires``
    (an ISO-8601 UTC instant, for the ``datetime`` filter). A `str`, so templates' plain-data
    check accepts it."""

    percent_off: int | None
    amount_off: float | None
    currency: str
    min_basket: float | None
    expires: str

    def __new__(
        cls,
        code: str,
        *,
        percent_off: int | None,
        amount_off: float | None,
        currency: str,
        min_basket: float | None,
        expires: str,
    ) -> OfferText:
        text = super().__new__(cls, code)
        text.percent_off = percent_off
        text.amount_off = amount_off
        text.currency = currency
        text.min_basket = min_basket
        text.expires = expires
        return text

    @property
    def code(self) -> str:
        return str.__str__(self)
