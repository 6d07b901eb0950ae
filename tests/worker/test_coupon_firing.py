"""A rule's coupon, end to end in one process: issued from its pool when the message is
composed, in the template, the record and the audit; a refused issue follows the rule's
policy; the checkout's calls and a purchase event carrying the code redeem it once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.worker.realtime import (
    Gateways,
    fire_post_purchase,
    gateway_shop,
    register,
    rule,
    shopper,
)
from worker.coupons import CouponPool
from worker.policy.jobs import FireJob
from worker.rules import Rule
from worker.service import checkout, ingest
from worker.service.runtime import Runtime
from worker.settings import Settings

BODY = (
    "{{ items[0].title }}{% if coupon %}: {{ coupon }} takes {{ coupon.percent_off }}% off "
    "until {{ coupon.expires | datetime('short') }}{% endif %}"
)


REMINDER = rule(
    "coupon_reminder", "coupon_expiring", lead_s=86_400,
    title="{{ coupon }} expires {{ coupon.expires | datetime('short') }}",
)  # fmt: skip


def coupon_shop(
    settings: Settings, gateways: Gateways, tmp_path: Path, budget: int, **coupon: Any
) -> Any:
    post_purchase = rule(
        "post_purchase", "post_purchase", body=BODY, delay_s=3600,
        coupon={"pool": "thanks", "percent_off": 10, "ttl_days": 3, **coupon},
    )  # fmt: skip
    return gateway_shop(
        settings, gateways, tmp_path / "index", lambda task, kwargs: None,
        rules=(Rule.model_validate(post_purchase), Rule.model_validate(REMINDER)),
        coupon_pools=(CouponPool(name="thanks", budget_count=budget),),
    )  # fmt: skip


@pytest.fixture
def shop(settings: Settings, gateways: Gateways, tmp_path: Path) -> Iterator[Runtime]:
    with coupon_shop(settings, gateways, tmp_path, budget=1) as rt:
        yield rt


def test_a_rules_coupon_is_issued_once_per_message_and_reaches_template_record_and_audit(
    shop: Runtime, gateways: Gateways
) -> None:
    rt, now = shop, time.time()
    user = shopper(rt, gateways, "c")
    mid = fire_post_purchase(rt, user, "b3-1", now)
    record = rt.outbox.get(mid)
    assert record is not None and record.coupon is not None and record.offer is not None
    assert f"{record.coupon} takes 10% off until" in record.body
    lead_price = float(rt.catalog.get_many([record.items[0]])[record.items[0]]["price"])
    assert record.offer["face_value"] == pytest.approx(lead_price * 0.10, abs=0.01)
    assert record.offer["expires_at"] == pytest.approx(now + 3 * 86_400)
    [decision] = [d for d in rt.audit.decisions(user) if d.get("message_id") == mid]
    assert decision["coupon"]["code"] == record.coupon
    assert decision["message"]["coupon"] == record.coupon

    job = FireJob("post_purchase", user, f"p-{user}", now, ("b3-1",), {})
    [again] = rt.firer().fire_many([job], now + 1)  # a redelivered firing
    assert again["action"] == "duplicate"
    [status] = rt.coupons.status(now + 1)
    assert status["issued"] == 1 and status["by_source"]["rule:post_purchase"]["issued"] == 1

    # the checkout checks it, then the purchase event carrying it redeems it, once
    answer = checkout.check_coupon(rt, {"code": record.coupon.lower(), "user_id": user}, now)
    assert answer["valid"] and answer["user_id"] == user
    event = {"event_id": "o-1", "user_id": user, "type": "purchase", "item_id": "b3-2",
             "ts": now + 60, "coupon": record.coupon}  # fmt: skip
    ingest.track_one(rt, event, now + 60, "d2")
    used = checkout.check_coupon(rt, {"code": record.coupon}, now + 61)
    assert used["reason"] == "used" and used["redeemed_at"] == pytest.approx(now + 60)
    refused = checkout.redeem_coupon(rt, {"code": record.coupon, "order_id": "o-2"}, now + 62)
    assert refused == {**refused, "redeemed": False, "reason": "used"}
    assert rt.metrics.snapshot()["coupons.redeem_refused.used"] == 1


def test_a_refused_coupon_sends_without_by_default_and_suppresses_when_told(
    shop: Runtime, settings: Settings, gateways: Gateways, tmp_path: Path
) -> None:
    rt, now = shop, time.time()
    fire_post_purchase(rt, shopper(rt, gateways, "a"), "b3-1", now)  # spends the budget of 1
    second = shopper(rt, gateways, "b")
    mid = fire_post_purchase(rt, second, "b3-1", now)
    record = rt.outbox.get(mid)
    assert record is not None and record.coupon is None and ": " not in record.body
    [decision] = [d for d in rt.audit.decisions(second) if d.get("message_id") == mid]
    assert decision["coupon"] == {"pool": "thanks", "refused": "pool_count"}
    assert rt.metrics.snapshot()["coupons.refused.pool_count"] == 1

    with coupon_shop(settings, gateways, tmp_path, 1, on_refused="suppress") as strict:
        third = shopper(strict, gateways, "s")
        job = FireJob("post_purchase", third, f"p-{third}", now, ("b3-1",), {})
        [suppressed] = strict.firer().fire_many([job], now)
    assert (suppressed["action"], suppressed["reason"]) == ("suppress", "coupon: pool_count")


def test_a_bad_checkout_call_is_rejected_and_recorded(shop: Runtime) -> None:
    answer = checkout.redeem_coupon(shop, {"code": "", "basket": -1}, time.time())
    assert answer["rejected"].startswith("redeem_coupon.code: ")
    assert answer["rejected"].endswith("(+1 more)")  # the basket below zero
    [kept] = shop.rejected.recent(1)
    assert kept["task"] == "pushrec.redeem_coupon"


def test_a_reminder_fires_a_day_before_an_unredeemed_code_expires_and_not_after_redemption(
    settings: Settings, gateways: Gateways, tmp_path: Path
) -> None:
    now = time.time()
    with coupon_shop(settings, gateways, tmp_path, budget=10) as rt:
        holders, codes = [], []
        for prefix in ("k", "r"):  # one at a time: the two share the gateway's one token
            user = shopper(rt, gateways, prefix)
            holders.append(user)
            record = rt.outbox.get(fire_post_purchase(rt, user, "b3-1", now))
            assert record is not None and record.coupon is not None
            codes.append(record.coupon)
        due = now + 3 * 86_400 - 86_400
        for user, code in zip(holders, codes, strict=True):
            assert rt.delayed.due_at(f"coupon_reminder:{user}:coupon:{code}") == pytest.approx(due)
        assert rt.coupons.redeem(codes[1], user_id=holders[1], ref="o", now=now + 60)["redeemed"]

        register(rt, holders[0], "fcm", gateways.targets["fcm"], now + 120)  # the token back
        claimed = [c for c in rt.delayed.claim_due(due + 1) if c.job.job_id.startswith("coupon_")]
        jobs = [FireJob.from_kwargs(c.job.kwargs) for c in claimed]
        kept, redeemed = sorted(
            rt.firer().fire_many(jobs, due + 1),
            key=lambda d: d["trigger"]["id"] != f"coupon:{codes[0]}",
        )
        assert kept["action"] == "queued", (kept["reason"], kept.get("policy"))
        assert kept["coupon"]["code"] == codes[0]
        reminder = rt.outbox.get(str(kept["message_id"]))
        assert reminder is not None and reminder.title.startswith(f"{codes[0]} expires ")
        assert reminder.coupon == codes[0]
        assert (redeemed["action"], redeemed["reason"]) == (
            "suppress", "condition: the code was redeemed or has expired"
        )  # fmt: skip
        [status] = rt.coupons.status(due + 1)
        assert status["issued"] == 2  # a reminder issues nothing
