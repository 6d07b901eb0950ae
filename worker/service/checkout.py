"""The shop's checkout and pushrec's coupons: `pushrec.check_coupon`, `pushrec.redeem_coupon`,
and purchase events that carry a `coupon` (each redeems it, its event id the reference).

Each takes the raw kwargs, rejects what breaks the contract (recorded like every bad
input, answered `{"rejected": reason}`), and answers the ledger's JSON
(`worker/coupons/ledger.py`: `valid`, `reason`, `code`, `user_id`, `offer`, `expires_at`,
`expired`, `used`, `redeemed_at`, and for a redemption `redeemed`, `again`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, TypeVar

from pydantic import Field, StringConstraints

from worker import contract
from worker.service.runtime import Runtime
from worker.shoppers.inputs import Event, Id, InvalidInput, StrictModel, require_object, validated


class _Checkout(StrictModel):
    code: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    user_id: Id | None = None
    basket: float | None = Field(default=None, ge=0, le=1e9, allow_inf_nan=False)


class _Redemption(_Checkout):
    order_id: Id | None = Field(default=None, description="a retried redemption answers again")


C = TypeVar("C", bound=_Checkout)


def check_coupon(rt: Runtime, payload: Any, now: float) -> dict[str, Any]:
    call = _parsed(rt, _Checkout, contract.CHECK_COUPON, payload)
    if isinstance(call, str):
        return {"rejected": call}
    return rt.coupons.check(call.code, user_id=call.user_id, basket=call.basket, now=now)


def redeem_coupon(rt: Runtime, payload: Any, now: float) -> dict[str, Any]:
    call = _parsed(rt, _Redemption, contract.REDEEM_COUPON, payload)
    if isinstance(call, str):
        return {"rejected": call}
    return rt.coupons.redeem(
        call.code, user_id=call.user_id, ref=call.order_id or "", basket=call.basket, now=now
    )


def _parsed(rt: Runtime, model: type[C], task: str, payload: Any) -> C | str:
    """The call as `model`, or why not (recorded in the rejected stream)."""
    try:
        return validated(model, require_object(payload, "call"), task.removeprefix("pushrec."))
    except InvalidInput as exc:
        rt.rejected.record(task, exc.code, exc.reason, payload)
        return exc.reason


def redeem_purchases(rt: Runtime, fresh: Sequence[Event]) -> int:
    """Redeem the coupon of each newly applied purchase event, at the purchase's time, for
    its shopper, the event id as reference (a redelivered event answers as the first);
    returns how many redeemed. The minimum basket is not checked here: an event is one
    line of the order, and the checkout's `check_coupon` saw the basket."""
    redeemed = 0
    for event in fresh:
        if event.type == "purchase" and event.coupon is not None:
            answer = rt.coupons.redeem(
                event.coupon, user_id=event.user_id, ref=event.event_id, now=event.ts
            )
            redeemed += bool(answer["redeemed"])
    return redeemed
