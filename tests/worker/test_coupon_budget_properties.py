"""Many issuers at once against one pool on the real Redis, threads and processes together:
the budget (count, face value, per shopper) is never exceeded, no code goes to two
shoppers, and every issue for one message returns one code.

Each message belongs to one shopper and several issuers ask for the same messages (a
redelivered task, two workers racing), in different orders."""

from __future__ import annotations

import multiprocessing
import random
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.clock import RUN_NOW
from tests.redis_server import delete_prefix
from tests.worker.test_coupons import open_coupons
from worker.coupons import CouponPool, CouponSpec, IssuedCoupon

Outcome = tuple[str, str, str | None, float]  # message id, user, code or None, face value


@dataclass(frozen=True)
class Case:
    redis_url: str
    prefix: str
    pool: CouponPool
    spec: CouponSpec
    shoppers: int
    messages: int


def issue_all(case: Case, seed: int) -> list[Outcome]:
    """One issuer: every message of the case, in its own order (a process's entry point)."""
    coupons = open_coupons(case.redis_url, case.prefix, case.pool)
    order = list(range(case.messages))
    random.Random(seed).shuffle(order)
    out: list[Outcome] = []
    for m in order:
        user = f"u{m % case.shoppers}"
        result = coupons.issue(
            case.spec, source="campaign:c", message_id=f"m{m}", user_id=user, now=RUN_NOW,
            basis=float(1 + m % 7) * 10,
        )  # fmt: skip
        if isinstance(result, IssuedCoupon):
            out.append((f"m{m}", user, result.code, result.face_value))
        else:
            out.append((f"m{m}", user, None, 0.0))
    return out


@pytest.fixture(scope="module")
def processes() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    budget=st.integers(1, 25),
    value=st.none() | st.integers(5, 200),
    per_shopper=st.integers(1, 3),
    shoppers=st.integers(1, 15),
    messages=st.integers(1, 40),
    percent=st.booleans(),
    source_budget=st.none() | st.integers(1, 25),
    threads=st.integers(1, 4),
)
def test_concurrent_issuers_never_overspend_and_never_share_a_code(
    redis_url: str,
    processes: ProcessPoolExecutor,
    budget: int,
    value: int | None,
    per_shopper: int,
    shoppers: int,
    messages: int,
    percent: bool,
    source_budget: int | None,
    threads: int,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    pool = CouponPool(name="p", budget_count=budget, budget_value=value, per_shopper=per_shopper)
    spec = CouponSpec(
        pool="p",
        budget_count=source_budget,
        percent_off=15 if percent else None,
        amount_off=None if percent else 3.5,
    )
    case = Case(redis_url, prefix, pool, spec, shoppers, messages)
    try:
        remote = [processes.submit(issue_all, case, seed) for seed in range(3)]
        with ThreadPoolExecutor(threads) as local:
            results = list(local.map(lambda seed: issue_all(case, seed), range(100, 100 + threads)))
        results += [f.result(timeout=60) for f in remote]
        coupons = open_coupons(redis_url, prefix, pool)
        [status] = coupons.status(RUN_NOW)
    finally:
        delete_prefix(redis_url, prefix)

    code_of: dict[str, set[str | None]] = defaultdict(set)
    holders: dict[str, set[str]] = defaultdict(set)
    face: dict[str, float] = {}
    for outcome in (o for run in results for o in run):
        mid, user, code, worth = outcome
        code_of[mid].add(code)
        if code is not None:
            holders[code].add(user)
            face[code] = worth
    issued_codes = {c for codes in code_of.values() for c in codes if c is not None}
    # a message granted a code has that one code, in every issuer's answer
    assert all(len(codes - {None}) <= 1 for codes in code_of.values())
    assert all(len(users) == 1 for users in holders.values()), "a code went to two shoppers"
    assert len(issued_codes) == status["issued"] <= budget
    assert len(issued_codes) <= (source_budget or budget)
    spent = sum(face.values())
    assert spent == pytest.approx(status["face_value_issued"])
    if value is not None:
        assert spent <= value + 1e-9
    per_user: dict[str, int] = defaultdict(int)
    for code in issued_codes:
        per_user[next(iter(holders[code]))] += 1
    assert max(per_user.values(), default=0) <= per_shopper
