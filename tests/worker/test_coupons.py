"""Coupon pools on the real Redis: issuing against budgets, import, checkout, expiry.

Instants are `RUN_NOW`-relative: a code's lookup key expires at an absolute time
(`EXPIREAT`), which Redis compares with its own clock (tests/clock.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.clock import RUN_NOW
from worker.coupons import CouponPool, Coupons, CouponSpec, IssuedCoupon, Refusal, import_codes
from worker.coupons.codes import BadRow, CodeRow, read_code_file
from worker.settings import Settings, SettingsError
from worker.store.keys import Keys
from worker.store.metrics import Metrics
from worker.store.scripts import Scripts

NOW = RUN_NOW
DAY = 86_400


def open_coupons(redis_url: str, prefix: str, *pools: CouponPool) -> Coupons:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix)
    scripts = Scripts.register(client)
    return Coupons(client, keys, scripts, Metrics(client, keys), pools, "EUR", 400 * DAY)


@pytest.fixture
def coupons(redis_url: str, key_prefix: str) -> Iterator[Coupons]:
    pools = (
        CouponPool(name="gen", budget_count=3, budget_value=10.0, prefix="WB"),
        CouponPool(name="shop", source="imported", budget_count=100, per_shopper=2),
        CouponPool(name="other", source="imported", budget_count=100),
    )
    yield open_coupons(redis_url, key_prefix, *pools)


def issued(result: IssuedCoupon | Refusal) -> IssuedCoupon:
    assert isinstance(result, IssuedCoupon), result
    return result


def test_a_retried_issue_for_one_message_returns_the_same_code_and_spends_once(
    coupons: Coupons,
) -> None:
    spec = CouponSpec(pool="gen", percent_off=10, ttl_days=7)
    first = issued(coupons.issue(spec, source="rule:r", message_id="m1", user_id="u1", now=NOW,
                                 basis=25.0))  # fmt: skip
    again = issued(coupons.issue(spec, source="rule:r", message_id="m1", user_id="u1",
                                 now=NOW + 5, basis=99.0))  # fmt: skip
    assert first.fresh and not again.fresh
    assert again.code == first.code and again.face_value == first.face_value == 2.5
    assert first.code.startswith("WB") and first.expires_at == NOW + 7 * DAY
    [status] = coupons.status(NOW, ["gen"])
    assert (status["issued"], status["face_value_issued"], status["remaining_count"]) == (1, 2.5, 2)
    text = first.template_text()
    assert str(text) == first.code and text.percent_off == 10 and text.amount_off is None


def test_budgets_and_the_shoppers_limit_refuse_with_their_reason(coupons: Coupons) -> None:
    spec = CouponSpec(pool="gen", amount_off=4.0)

    def issue(mid: str, user: str, s: CouponSpec = spec) -> IssuedCoupon | Refusal:
        return coupons.issue(s, source="rule:r", message_id=mid, user_id=user, now=NOW)

    issued(issue("m1", "u1"))
    assert issue("m2", "u1") == Refusal("gen", "shopper_limit")  # per_shopper = 1
    issued(issue("m3", "u2"))
    assert issue("m4", "u3") == Refusal("gen", "pool_value")  # 8 of 10 EUR spent, 4 more
    small = CouponSpec(pool="gen", amount_off=1.0, budget_count=1)
    assert issue("m5", "u4", small) == Refusal("gen", "source_count")  # rule r issued 2
    issued(coupons.issue(small, source="rule:s", message_id="m6", user_id="u4", now=NOW))
    assert issue("m7", "u5", small.model_copy(update={"budget_count": None})) == Refusal(
        "gen", "pool_count"
    )
    [status] = coupons.status(NOW, ["gen"])
    assert status["issued"] == 3 and status["face_value_issued"] == 9.0
    assert status["refused"] == {
        "shopper_limit": 1, "pool_value": 1, "source_count": 1, "pool_count": 1
    }  # fmt: skip
    assert status["by_source"]["rule:r"]["issued"] == 2
    assert status["by_source"]["rule:s"]["face_value_issued"] == 1.0


def test_checkout_checks_then_redeems_a_code_once(coupons: Coupons) -> None:
    spec = CouponSpec(pool="gen", percent_off=10, min_basket=30.0, ttl_days=2)
    code = issued(coupons.issue(spec, source="rule:r", message_id="m1", user_id="u1",
                                now=NOW, basis=20.0)).code  # fmt: skip
    typed = code.lower().replace("-", " ").replace("0", "o")  # how a shopper types it

    ok = coupons.check(typed, user_id="u1", basket=40.0, now=NOW + 60)
    assert ok["valid"] and ok["code"] == code and ok["user_id"] == "u1"
    assert ok["offer"] == {"percent_off": 10, "amount_off": None, "min_basket": 30.0,
                           "currency": "EUR"}  # fmt: skip
    assert coupons.check(code, user_id="u2", now=NOW)["reason"] == "foreign"
    assert coupons.check(code, basket=10.0, now=NOW)["reason"] == "below_minimum"
    assert coupons.check(code, now=NOW + 3 * DAY)["reason"] == "expired"
    assert coupons.check("NOPE-1234", now=NOW)["reason"] == "unknown"
    assert coupons.check("!!", now=NOW)["reason"] == "malformed"

    assert coupons.redeem(code, user_id="u2", ref="o1", now=NOW)["reason"] == "foreign"
    done = coupons.redeem(typed, user_id="u1", ref="o1", basket=40.0, now=NOW + 60)
    assert done["redeemed"] and not done["again"]
    retried = coupons.redeem(code, user_id="u1", ref="o1", now=NOW + 61)
    assert retried["redeemed"] and retried["again"]  # the same order, asked again
    second = coupons.redeem(code, user_id="u1", ref="o2", now=NOW + 62)
    assert (second["redeemed"], second["reason"], second["redeemed_at"]) == (
        False,
        "used",
        NOW + 60,
    )
    assert coupons.check(code, now=NOW + 70)["used"]
    [status] = coupons.status(NOW + 70, ["gen"])
    assert status["redeemed"] == 1 and status["outstanding"] == 0
    assert status["by_source"]["rule:r"]["redemption_rate"] == 1.0
    metrics = coupons._metrics.snapshot()
    assert metrics["coupons.redeem_refused.foreign"] == 1
    assert metrics["coupons.redeem_refused.used"] == 1


def test_unredeemed_codes_expire_and_stop_counting_as_outstanding(coupons: Coupons) -> None:
    spec = CouponSpec(pool="gen", amount_off=1.0, ttl_days=1)
    for n in range(3):
        issued(coupons.issue(spec, source="campaign:c", message_id=f"m{n}", user_id=f"u{n}",
                             now=NOW))  # fmt: skip
    [first] = coupons.status(NOW + 10, ["gen"])
    assert (first["outstanding"], first["expired"]) == (3, 0)
    code = coupons.check(coupons._client.hget(coupons._keys.coupon_pool("gen").by_message, "m0"),
                         now=NOW)["code"]  # fmt: skip
    assert coupons.redeem(code, now=NOW + 100)["redeemed"]
    assert coupons.expire(NOW + 2 * DAY) == 2
    [after] = coupons.status(NOW + 2 * DAY, ["gen"])
    assert (after["outstanding"], after["expired"], after["redeemed"]) == (0, 2, 1)
    assert after["by_source"]["campaign:c"]["expired"] == 2
    assert after["remaining_count"] == 0  # an expired code does not give its budget back


def test_an_import_names_every_bad_row_and_never_lets_two_pools_hold_a_code(
    coupons: Coupons,
) -> None:
    pools = coupons.pools
    client, keys = coupons._client, coupons._keys
    bad_file = ["code,value\n", "SAVE-0001,5\n", "save0001,5\n", "\n", "x!,5\n", "OK-0002,5\n"]
    rows = list(read_code_file(bad_file))
    assert rows == [
        CodeRow(2, "SAVE0001"),
        BadRow(3, "duplicate of line 2"),
        BadRow(5, "malformed: characters outside A-Z 0-9 _: '!'"),
        CodeRow(6, "OK0002"),
    ]
    stopped = import_codes(client, keys, pools["shop"], bad_file)
    assert stopped.stopped and stopped.added == 0 and len(stopped.bad) == 2
    assert coupons.status(NOW, ["shop"])[0]["available"] == 0

    done = import_codes(client, keys, pools["shop"], bad_file, skip_bad=True)
    assert (done.added, len(done.bad)) == (2, 2)
    other = import_codes(client, keys, pools["other"], ["SAVE0001\n", "NEW00003\n"])
    assert other.added == 1
    assert [(b.line, b.reason) for b in other.bad] == [(1, "already present: in pool 'shop'")]
    again = import_codes(client, keys, pools["shop"], ["OK0002\n"])
    assert again.added == 0 and again.bad[0].reason == "already present: in this pool"
    assert coupons.status(NOW, ["shop"])[0]["available"] == 2

    spec = CouponSpec(pool="shop", amount_off=5.0)
    codes = {
        issued(
            coupons.issue(spec, source="rule:r", message_id=f"m{n}", user_id=f"u{n}", now=NOW)
        ).code
        for n in range(2)
    }
    assert codes == {"SAVE0001", "OK0002"}
    empty = coupons.issue(spec, source="rule:r", message_id="m9", user_id="u9", now=NOW)
    assert empty == Refusal("shop", "pool_empty")
    reissued = import_codes(client, keys, pools["shop"], ["OK0002\n"])
    assert reissued.bad[0].reason == "already present: issued from this pool"
    assert coupons.check("ok-0002", user_id="u0", now=NOW)["pool"] == "shop"
    with pytest.raises(ValueError, match="only imported pools"):
        import_codes(client, keys, pools["gen"], ["A1234\n"])


def pool_settings(**fields: Any) -> Settings:
    return Settings.load(redis_url="redis://localhost:1", **fields)


def test_pool_and_offer_mistakes_stop_start_up_naming_the_field() -> None:
    rule = {"name": "r", "kind": "cart_abandoned", "title": "t", "body": "b"}
    cases = {
        "coupon_pools.0.budget_count": {"coupon_pools": [{"name": "p", "budget_count": 0}]},
        "coupon_pools: pool names must be unique": {
            "coupon_pools": [{"name": "p", "budget_count": 1}] * 2
        },
        "coupon_pools.0.kind": {"coupon_pools": [{"name": "p", "budget_count": 1, "kind": "x"}]},
        "rules.0.coupon (": {"rules": [{**rule, "coupon": {"percent_off": 10, "ttl_days": 7}}]},
        "give exactly one offer": {"rules": [{**rule, "coupon": {"pool": "p"}}]},
        "rules.r.coupon.pool: no [[coupon_pools]] named 'p'": {
            "rules": [{**rule, "coupon": {"pool": "p", "percent_off": 5}}]
        },
    }
    for expected, fields in cases.items():
        with pytest.raises(SettingsError) as caught:
            pool_settings(**fields)
        assert expected in str(caught.value)
    with pytest.raises(SettingsError, match="a coupon names its pool"):
        pool_settings(rules=[{**rule, "coupon": {"percent_off": 10}}])


def test_the_coupons_command_imports_a_file_and_prints_the_figures(
    settings: Settings, tmp_path: Path
) -> None:
    from tests.worker.conftest import worker_env
    from tests.worker.test_cli import pushrec

    config = tmp_path / "pushrec.toml"
    config.write_text(
        '[[coupon_pools]]\nname = "shop"\nsource = "imported"\nbudget_count = 10\n'
        "budget_value = 50.0\n"
    )
    env = {**worker_env(settings), "PUSHREC_CONFIG": str(config)}
    codes = tmp_path / "codes.csv"
    codes.write_text("Code\nSAVE-0001\nSAVE-0002\nsave0001\nno!\n")
    stopped = pushrec("coupons", "import", "shop", str(codes), env=env)
    assert stopped.returncode == 1
    assert f"{codes}:4: duplicate of line 2" in stopped.stderr
    assert f"{codes}:5: malformed" in stopped.stderr and "nothing imported" in stopped.stderr

    done = pushrec("coupons", "import", "shop", str(codes), "--skip-bad", env=env)
    assert done.returncode == 1, done.stderr  # bad rows were reported: not a clean import
    assert json.loads(done.stdout)["added"] == 2
    clean = tmp_path / "more.csv"
    clean.write_text("SAVE-0003\n")
    assert pushrec("coupons", "import", "shop", str(clean), env=env).returncode == 0

    table = pushrec("coupons", "status", env=env)
    assert table.returncode == 0, table.stderr
    assert (
        "pool shop (imported): 10 codes, 50.00 EUR left, 3 imported codes unissued" in table.stdout
    )
    [figures] = json.loads(pushrec("coupons", "status", "shop", "--json", env=env).stdout)
    assert (figures["issued"], figures["available"]) == (0, 3)
    unknown = pushrec("coupons", "status", "nope", env=env)
    assert unknown.returncode == 2 and "no coupon pool 'nope' (pools: shop)" in unknown.stderr
