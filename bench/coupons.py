"""Coupon issuing and redemption rates on a real Redis: one issuer, then several threads
against one pool (the Lua step serialises them in Redis), then redemptions.

    python bench/coupons.py [--codes 20000] [--threads 4] [--json bench/out/coupons.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.redis_server import delete_prefix, redis_server  # noqa: E402
from worker.coupons import CouponPool, Coupons, CouponSpec, IssuedCoupon  # noqa: E402
from worker.store.keys import Keys  # noqa: E402
from worker.store.metrics import Metrics  # noqa: E402
from worker.store.scripts import Scripts  # noqa: E402


def open_coupons(url: str, prefix: str, pool: CouponPool) -> Coupons:
    client = redis.Redis.from_url(url, decode_responses=True)
    keys = Keys(prefix)
    return Coupons(client, keys, Scripts.register(client), Metrics(client, keys), [pool], "EUR",
                   86_400)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--codes", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    spec = CouponSpec(pool="bench", percent_off=10, ttl_days=7)
    pool = CouponPool(name="bench", budget_count=args.codes * 2, per_shopper=args.codes)
    out: dict[str, float | int] = {"codes": args.codes, "threads": args.threads}
    with redis_server() as url:
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        coupons = open_coupons(url, prefix, pool)
        now = time.time()

        def issue(n: int, c: Coupons = coupons) -> str:
            result = c.issue(spec, source="rule:r", message_id=f"m{n}", user_id=f"u{n % 997}",
                             now=now, basis=20.0)  # fmt: skip
            assert isinstance(result, IssuedCoupon)
            return result.code

        start = time.perf_counter()
        codes = [issue(n) for n in range(args.codes)]
        out["issue_one_thread_per_s"] = args.codes / (time.perf_counter() - start)

        per_thread = [open_coupons(url, prefix, pool) for _ in range(args.threads)]
        start = time.perf_counter()
        with ThreadPoolExecutor(args.threads) as threads:
            list(threads.map(lambda n: issue(n, per_thread[n % args.threads]),
                             range(args.codes, 2 * args.codes)))  # fmt: skip
        out["issue_threads_per_s"] = args.codes / (time.perf_counter() - start)

        start = time.perf_counter()
        for n, code in enumerate(codes):
            assert coupons.redeem(code, ref=f"o{n}", now=now + 1)["redeemed"]
        out["redeem_one_thread_per_s"] = args.codes / (time.perf_counter() - start)
        [status] = coupons.status(now + 2)
        out["issued"], out["redeemed"] = status["issued"], status["redeemed"]
        delete_prefix(url, prefix)
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
