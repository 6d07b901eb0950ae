"""Issuing, checking and redeeming coupons against their pools' budgets, in Redis.

`Coupons.issue` is the one way a code reaches a shopper (rules through firing, campaigns
through their runs): one Lua script per call (`coupon_issue.lua`) checks the pool's count
and face-value budgets, the caller's own (per rule or campaign), and the shopper's limit,
takes an imported code or records a freshly minted one, and maps the message id to it, so
a retried issue for the same message returns the same code and spends nothing more.
`check` and `redeem` are the checkout's side (`pushrec.check_coupon`,
`pushrec.redeem_coupon`, and purchase events carrying `coupon`); a redemption is one
script too (`coupon_redeem.lua`), so a code is redeemed once however many checkouts race.
Keys: `worker/store/keys.py` (`{c:<pool>}`, `{k:<code>}`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from push.coupons import OfferText, format_coupon, new_coupon, normalize_coupon
from worker.coupon_config import CouponPool, CouponSpec
from worker.coupons.codes import lookup_forms
from worker.coupons.reminders import Reminders
from worker.store.client import StatePipeline, StateRedis
from worker.store.keys import Keys
from worker.store.metrics import Metrics
from worker.store.scripts import Scripts

log = logging.getLogger(__name__)

# How long a checkout still hears "expired" (not "unknown") for a code past its expiry.
CODE_KEPT_S = 30 * 86_400
# What a dry run's sample messages show where the code goes: the offer text is real, the
# code is not issued (`Coupons.stand_in`).
DRY_RUN_CODE = "XXXX-XXXX"
_MINT_TRIES = 5  # a minted code already issued from the pool (60 random bits: never seen)
_SWEEP_BATCH = 1000

RefusalReason = Literal[
    "pool_count", "pool_value", "source_count", "source_value", "shopper_limit", "pool_empty"
]
CheckoutReason = Literal[
    "malformed", "unknown", "not_issued", "used", "foreign", "expired", "below_minimum"
]


@dataclass(frozen=True)
class IssuedCoupon:
    """A code issued to a shopper for one message. `fresh`: issued by this call (False:
    the same message's earlier issue, returned again)."""

    code: str  # as shown to the shopper
    pool: str
    user_id: str
    message_id: str
    source: str  # "rule:<name>" or "campaign:<name>"
    offer: dict[str, Any]  # CouponSpec.offer()
    face_value: float
    currency: str
    issued_at: float
    expires_at: float
    fresh: bool

    def template_text(self) -> OfferText:
        """The code for templates: renders as the code, with the offer as attributes."""
        return OfferText(
            self.code,
            percent_off=self.offer.get("percent_off"),
            amount_off=self.offer.get("amount_off"),
            currency=self.currency,
            min_basket=self.offer.get("min_basket"),
            expires=_iso(self.expires_at),
        )

    def as_dict(self) -> dict[str, Any]:
        """What the message record and the shopper's audit keep."""
        return {
            "code": self.code,
            "pool": self.pool,
            "source": self.source,
            **self.offer,
            "currency": self.currency,
            "face_value": self.face_value,
            "expires_at": self.expires_at,
        }


@dataclass(frozen=True)
class Refusal:
    """No code: the pool's or the caller's budget is spent, the shopper holds their
    limit, or an imported pool ran out of codes."""

    pool: str
    reason: RefusalReason


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def _cents(value: float | None) -> int:
    return -1 if value is None else round(value * 100)


class Coupons:
    def __init__(
        self,
        client: StateRedis,
        keys: Keys,
        scripts: Scripts,
        metrics: Metrics,
        pools: Sequence[CouponPool],
        currency: str,
        user_ttl_s: int,
        reminders: Reminders | None = None,
    ) -> None:
        self._client = client
        self._keys = keys
        self._scripts = scripts
        self._metrics = metrics
        self.pools: dict[str, CouponPool] = {p.name: p for p in pools}
        self._currency = currency
        self._user_ttl_s = user_ttl_s
        self._reminders = reminders

    # --- issuing ----------------------------------------------------------------------
    def stand_in(
        self,
        spec: CouponSpec,
        *,
        source: str,
        message_id: str,
        user_id: str,
        now: float,
        basis: float = 0.0,
    ) -> IssuedCoupon:
        """What `issue` would give, priced alike, with `DRY_RUN_CODE` for the code and
        nothing issued or counted: a dry run's messages read as the shopper's would."""
        stored = self._record_of(spec, source, message_id, user_id, now, basis)
        return _coupon(DRY_RUN_CODE, spec.pool, stored, fresh=False)

    def issue(
        self,
        spec: CouponSpec,
        *,
        source: str,
        message_id: str,
        user_id: str,
        now: float,
        basis: float = 0.0,
    ) -> IssuedCoupon | Refusal:
        """Issue `spec`'s offer from its pool to `user_id` for message `message_id` (one
        Lua step; idempotent per message id). `source` names the issuer ("rule:<name>",
        "campaign:<name>"): its own budget (`spec.budget_*`) and its figures in `status`.
        `basis`: the price a percent offer's face value is taken of. A refusal is counted
        (metrics `coupons.refused.<reason>`)."""
        pool = self.pools[spec.pool]
        stored = self._record_of(spec, source, message_id, user_id, now, basis)
        face, expires = stored["face"], stored["expires_at"]
        record = json.dumps(stored, separators=(",", ":"))
        pk = self._keys.coupon_pool(pool.name)
        for _ in range(_MINT_TRIES):
            candidate = _mint(pool) if pool.source == "generated" else ""
            args: list[str | int | float] = [
                message_id, user_id, candidate, record,
                face, repr(expires), source, pool.budget_count, _cents(pool.budget_value),
                spec.budget_count or -1, _cents(spec.budget_value), pool.per_shopper,
            ]  # fmt: skip
            reply = self._scripts.coupon_issue(
                keys=pk.script_keys(), args=args, client=self._client
            )
            if reply[0] != "collision":
                break
        else:
            raise RuntimeError(f"pool {pool.name}: {_MINT_TRIES} minted codes were all taken")
        if reply[0] == "refused":
            self._metrics.add({f"coupons.refused.{reply[1]}": 1})
            return Refusal(pool.name, reply[1])
        issued = self._issued(pool, reply[1], json.loads(reply[2]), fresh=reply[0] == "issued")
        pipe = self._client.pipeline(transaction=False)
        self._note_holder(pool, reply[1], user_id, issued.expires_at, pipe)
        if self._reminders is not None:  # again on a retried issue: idempotent by job id
            self._reminders.schedule(user_id, issued.code, issued.expires_at, now, pipe)
        self._metrics.add({"coupons.issued": int(issued.fresh)}, pipe=pipe)
        pipe.execute()
        return issued

    def _record_of(
        self,
        spec: CouponSpec,
        source: str,
        message_id: str,
        user_id: str,
        now: float,
        basis: float,
    ) -> dict[str, Any]:
        """What the ledger keeps of a code issued now (face value in hundredths)."""
        return {
            "user_id": user_id, "message_id": message_id, "source": source,
            "offer": spec.offer(), "face": spec.face_cents(basis), "currency": self._currency,
            "issued_at": now, "expires_at": spec.expiry(now),
        }  # fmt: skip

    def _issued(
        self, pool: CouponPool, code: str, stored: Mapping[str, Any], fresh: bool
    ) -> IssuedCoupon:
        return _coupon(self._display(pool, code), pool.name, stored, fresh)

    def held(self, text: str, user_id: str, now: float) -> IssuedCoupon | None:
        """The code `text` if `user_id` holds it unredeemed and unexpired at `now` (a
        reminder's check), else None."""
        located = self._locate(text)
        if located is None or located[1] not in self.pools:
            return None
        code, pool_name = located
        stored, redeemed = self._records(pool_name, code)
        if stored is None or redeemed is not None:
            return None
        if stored["user_id"] != user_id or now >= float(stored["expires_at"]):
            return None
        return self._issued(self.pools[pool_name], code, stored, fresh=False)

    def _note_holder(
        self, pool: CouponPool, code: str, user_id: str, expires: float, pipe: StatePipeline
    ) -> None:
        """The issue's writes outside the pool's slot (in `pipe`), idempotent (a retried
        issue writes them again): code -> pool for checkouts, the shopper's codes."""
        code_key = self._keys.coupon_code(code)
        pipe.hsetnx(code_key, "pool", pool.name)
        pipe.expireat(code_key, int(expires + CODE_KEPT_S))
        user_key = self._keys.user(user_id).coupons
        pipe.hset(user_key, code, pool.name)
        pipe.expire(user_key, self._user_ttl_s)

    @staticmethod
    def _display(pool: CouponPool | None, code: str) -> str:
        return format_coupon(code) if pool is not None and pool.source == "generated" else code

    # --- checkout ---------------------------------------------------------------------
    def _locate(self, text: Any) -> tuple[str, str] | None:
        """(canonical code, pool) of a checkout's code text, or None if no pool knows it."""
        forms = lookup_forms(text) if isinstance(text, str) else []
        if not forms:
            return None
        pipe = self._client.pipeline(transaction=False)
        for form in forms:
            pipe.hget(self._keys.coupon_code(form), "pool")
        for form, pool in zip(forms, pipe.execute(), strict=True):
            if pool:
                return form, pool
        return None

    def check(
        self, text: Any, *, user_id: str | None = None, basket: float | None = None, now: float
    ) -> dict[str, Any]:
        """What a checkout needs to know of a code: `valid` (redeemable now by `user_id`,
        when given, for a basket of `basket`, when given), `reason` when not, whose it is,
        its offer, `expired`, `used`. Counted (metrics `coupons.checked.<valid|reason>`)."""
        answer = self._check(text, user_id, basket, now)
        self._metrics.add({f"coupons.checked.{answer['reason'] or 'valid'}": 1})
        return answer

    def _check(
        self, text: Any, user_id: str | None, basket: float | None, now: float
    ) -> dict[str, Any]:
        located = self._locate(text)
        if located is None:
            return _answer(_unlocated(text))
        code, pool_name = located
        rec, used = self._records(pool_name, code)
        shown = self._display(self.pools.get(pool_name), code)
        if rec is None:
            return _answer("not_issued", code=shown, pool=pool_name)
        expired = now >= float(rec["expires_at"])
        minimum = rec["offer"].get("min_basket")
        reason: CheckoutReason | None = None
        if used is not None:
            reason = "used"
        elif user_id is not None and user_id != rec["user_id"]:
            reason = "foreign"
        elif expired:
            reason = "expired"
        elif basket is not None and minimum is not None and basket < minimum:
            reason = "below_minimum"
        return _answer(reason, code=shown, pool=pool_name, record=rec, used=used, expired=expired)

    def holdings(self, user_id: str, now: float) -> list[dict[str, Any]]:
        """The codes issued to `user_id` (those still known), each as `check` answers for
        its holder, soonest expiry first (`pushrec user show`; not counted)."""
        raw: dict[str, str] = self._client.hgetall(self._keys.user(user_id).coupons)  # type: ignore[assignment]
        answers = [self._check(code, user_id, None, now) for code in raw]
        known = [a for a in answers if a["expires_at"] is not None]
        return sorted(known, key=lambda a: float(a["expires_at"]))

    def _records(self, pool: str, code: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """A code's issue record and its redemption (None: not issued, not redeemed)."""
        pk = self._keys.coupon_pool(pool)
        pipe = self._client.pipeline(transaction=False)
        pipe.hget(pk.issued, code)
        pipe.hget(pk.redeemed, code)
        raw, redemption = pipe.execute()
        return (json.loads(raw) if raw else None, json.loads(redemption) if redemption else None)

    def redeem(
        self,
        text: Any,
        *,
        user_id: str | None = None,
        ref: str = "",
        basket: float | None = None,
        now: float,
    ) -> dict[str, Any]:
        """Redeem a code exactly once (one Lua step). `ref` (the order or event id) makes
        a retried call answer as the first did; another redemption is refused `used`.
        Refusals are counted (metrics `coupons.redeem_refused.<reason>`)."""
        located = self._locate(text)
        if located is None:
            reason = _unlocated(text)
            self._metrics.add({f"coupons.redeem_refused.{reason}": 1})
            return {**_answer(reason), "redeemed": False}
        code, pool_name = located
        reply = self._scripts.coupon_redeem(
            keys=self._keys.coupon_pool(pool_name).script_keys(),
            args=[code, user_id or "", ref, repr(now), repr(-1 if basket is None else basket)],
            client=self._client,
        )
        shown = self._display(self.pools.get(pool_name), code)
        if reply[0] == "refused":
            self._metrics.add({f"coupons.redeem_refused.{reply[1]}": 1})
            rec = json.loads(reply[2]) if reply[2] else None
            used = json.loads(reply[3]) if reply[3] else None
            expired = rec is not None and now >= float(rec["expires_at"])
            answer = _answer(reply[1], code=shown, pool=pool_name, record=rec, used=used,
                             expired=expired)  # fmt: skip
            return {**answer, "redeemed": False}
        if reply[0] == "redeemed":
            self._metrics.add({"coupons.redeemed": 1})
        rec, used = json.loads(reply[1]), json.loads(reply[2])
        answer = _answer(None, code=shown, pool=pool_name, record=rec, used=used, expired=False)
        return {**answer, "valid": False, "redeemed": True, "again": reply[0] == "again"}

    # --- expiry and figures -------------------------------------------------------------
    def expire(self, now: float) -> int:
        """Sweep every pool's codes past expiry and unredeemed (scheduler, each minute;
        `status` first); returns how many expired."""
        total = 0
        for name in self.pools:
            keys = self._keys.coupon_pool(name).script_keys()
            while True:
                n = int(
                    self._scripts.coupon_expire(
                        keys=keys, args=[repr(now), _SWEEP_BATCH], client=self._client
                    )
                )
                total += n
                if n < _SWEEP_BATCH:
                    break
        if total:
            self._metrics.add({"coupons.expired": total})
        return total

    def status(self, now: float, pools: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Per pool: issued, redeemed, expired, outstanding, face value spent and redeemed,
        remaining budget, refusals, and per source (rule, campaign) its figures and
        redemption rate. Sweeps expired codes first, so the figures are current."""
        self.expire(now)
        names = list(pools) if pools is not None else list(self.pools)
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            pk = self._keys.coupon_pool(name)
            pipe.hgetall(pk.totals)
            pipe.scard(pk.available)
            pipe.zcard(pk.expiring)
        replies = iter(pipe.execute())
        out = []
        for name in names:
            totals, available, outstanding = next(replies), next(replies), next(replies)
            out.append(_pool_status(self.pools[name], totals, available, outstanding))
        return out


def _unlocated(text: Any) -> CheckoutReason:
    """Why no pool knows `text`: not a code at all, or a code pushrec never held."""
    return "unknown" if isinstance(text, str) and lookup_forms(text) else "malformed"


def _answer(
    reason: str | None,
    *,
    code: str | None = None,
    pool: str | None = None,
    record: Mapping[str, Any] | None = None,
    used: Mapping[str, Any] | None = None,
    expired: bool = False,
) -> dict[str, Any]:
    """A checkout's answer (JSON): the same fields whatever the outcome."""
    return {
        "valid": reason is None,
        "reason": reason,
        "code": code,
        "pool": pool,
        "user_id": record["user_id"] if record else None,
        "offer": {**record["offer"], "currency": record["currency"]} if record else None,
        "expires_at": record["expires_at"] if record else None,
        "expired": expired,
        "used": used is not None,
        "redeemed_at": used["at"] if used else None,
    }


def _pool_status(
    pool: CouponPool, totals: Mapping[str, str], available: int, outstanding: int
) -> dict[str, Any]:
    def n(name: str) -> int:
        return int(totals.get(name, 0))

    sources: dict[str, Counter[str]] = {}
    for name, count in totals.items():
        field, _, source = name.partition(":")
        if source and field != "refused":
            sources.setdefault(source, Counter())[field] = int(count)
    issued, value = n("issued"), n("value")
    return {
        "pool": pool.name,
        "source": pool.source,
        "issued": issued,
        "redeemed": n("redeemed"),
        "expired": n("expired"),
        "outstanding": outstanding,
        "available": available if pool.source == "imported" else None,
        "face_value_issued": value / 100,
        "face_value_redeemed": n("redeemed_value") / 100,
        "remaining_count": pool.budget_count - issued,
        "remaining_value": None if pool.budget_value is None else pool.budget_value - value / 100,
        "refused": {
            k.partition(":")[2]: int(v) for k, v in totals.items() if k.startswith("refused:")
        },
        "by_source": {
            source: {
                "issued": c["issued"],
                "face_value_issued": c["value"] / 100,
                "redeemed": c["redeemed"],
                "expired": c["expired"],
                "redemption_rate": c["redeemed"] / c["issued"] if c["issued"] else None,
            }
            for source, c in sorted(sources.items())
        },
    }


def _mint(pool: CouponPool) -> str:
    """A fresh code for a generated pool, in its canonical form (no dashes)."""
    return normalize_coupon(new_coupon(prefix=pool.prefix), check=False)


def _coupon(code: str, pool: str, stored: Mapping[str, Any], fresh: bool) -> IssuedCoupon:
    """The coupon a ledger record describes, shown as `code`."""
    return IssuedCoupon(
        code=code, pool=pool, user_id=stored["user_id"], message_id=stored["message_id"],
        source=stored["source"], offer=stored["offer"], face_value=stored["face"] / 100,
        currency=stored["currency"], issued_at=float(stored["issued_at"]),
        expires_at=float(stored["expires_at"]), fresh=fresh,
    )  # fmt: skip
