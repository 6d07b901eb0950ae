"""Campaign scale: synthetic shoppers with realistic state, a segment, RFM cuts, a dry run;
and the fan-out rate of a real run to the local gateways beside the no-op Celery ceiling
and the `track_batch` rate, measured in the same run.

    python bench/campaign.py --shoppers 20000 [--redis-url redis://…]
        [--fanout 5000] [--fanout-rate 100 ...] [--json bench/out/campaign.json]

Writes `--shoppers` shoppers straight into Redis (pipelined): profile (events, orders,
money, last event and purchase), a recent purchase, affinity over 12 categories,
preferences (consent, one of 6 timezones) and an FCM device; then indexes them with the
real `SegmentIndex.refresh_activity` / `refresh_devices` paths and times: indexing,
RFM cut points, the segment "lapsed buyers" (`min_orders = 2`, `dormant_days = 30`),
and a dry run of a campaign on it (no index published: trending picks), in this process
and on a pool of `--workers` processes. The memory of the segment indexes is the sum of
`MEMORY USAGE` over their keys, per shopper; beside it, Redis's `used_memory` growth per
shopper over all the state written (meaningful on a Redis of its own).

`--fanout N` (0: skip) then measures, on a private redis-server with the stack of
bench/realtime.py (Online Retail index, local gateways in their own process, worker nodes
of `--layout`): a campaign run (no rate limit) to N shoppers with FCM devices, sent by a
real scheduler and workers: messages/s at the gateway between the 10% and 90% receipts;
the same for a run with each `--fanout-rate R` as its `rate_per_s` (N fresh shoppers
each: does the run hold the rate?); then `realtime.measure_noop` and
`realtime.measure_saturation` (batched) on the same nodes.
Prints a table and writes JSON. Uses its own key prefix and deletes it afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # before bench/: its push.py would shadow the push package

from worker.campaigning.dry_run import dry_run  # noqa: E402
from worker.campaigns import Campaign  # noqa: E402
from worker.coupon_config import CouponPool  # noqa: E402
from worker.segments import Segment  # noqa: E402
from worker.service.runtime import Runtime  # noqa: E402
from worker.settings import Settings  # noqa: E402
from worker.shoppers.state import decayed_weight  # noqa: E402

DAY = 86_400.0
ZONES = ("UTC", "Europe/Berlin", "Europe/London", "America/New_York", "Asia/Tokyo",
         "Australia/Sydney")  # fmt: skip
CATEGORIES = tuple(f"cat{n}" for n in range(12))
CHUNK = 2000


def write_shoppers(rt: Runtime, count: int, now: float, seed: int = 0) -> None:
    """Shoppers' own keys, as the event script and the contact tasks would leave them."""
    rng = random.Random(seed)
    device = json.dumps({"channel": "fcm", "registered_at": now - DAY, "active": True,
                         "token": "fcm-token-bench-" + "x" * 20})  # fmt: skip
    pipe = rt.redis.pipeline(transaction=False)
    for n in range(count):
        k = rt.keys.user(f"b{n}")
        orders = min(int(rng.expovariate(0.6)), 40)
        last = now - rng.expovariate(1 / (40 * DAY))
        profile: dict[str, Any] = {"first_seen": last - 200 * DAY, "last_seen": last,
                                   "events": orders * 5 + 3}  # fmt: skip
        if orders:
            profile |= {"orders": orders, "monetary": round(orders * rng.uniform(8, 90), 2),
                        "last_purchase": last - rng.uniform(0, 5 * DAY)}  # fmt: skip
        pipe.hset(k.profile, mapping=profile)
        item = f"i{rng.randrange(500)}"
        pipe.lpush(k.recent, json.dumps({"ts": last, "type": "view", "item_id": item}))
        for category in rng.sample(CATEGORIES, 3):
            pipe.zadd(k.affinity, {category: decayed_weight(rng.randint(1, 10), last)})
        pipe.hset(k.preferences, mapping={"consent:marketing:*": "1",
                                          "timezone": rng.choice(ZONES)})  # fmt: skip
        pipe.hset(k.devices, f"d{n}", device)
        if n % CHUNK == CHUNK - 1:
            pipe.execute()
    pipe.execute()
    bucket = int(now // rt.settings.trending_bucket_s)
    for n in range(500):  # each item in its shard's bucket, as the event script puts it
        trending = rt.keys.trending_items(bucket, rt.keys.shard(f"i{n}"))
        rt.redis.zadd(trending, {f"i{n}": 500 - n})
        rt.redis.expire(trending, 3600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shoppers", type=int, default=20_000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes of the pooled dry run")  # fmt: skip
    parser.add_argument("--fanout", type=int, default=5000, help="shoppers of the real run")
    parser.add_argument("--fanout-rate", type=float, action="append", default=[],
                        help="also run the campaign with this rate_per_s (repeatable)")  # fmt: skip
    parser.add_argument("--layout", default="activity+push+maintenance:2",
                        help="worker nodes, as bench/realtime.py --layouts")  # fmt: skip
    parser.add_argument("--profile", type=Path,
                        help="folder for py-spy stacks of the fan-out's worker nodes")  # fmt: skip
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "campaign.json")
    args = parser.parse_args()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    segment = Segment.model_validate({"name": "lapsed", "min_orders": 2, "dormant_days": 30})
    campaign = Campaign(name="winback", segment="lapsed", holdout_pct=10,
                        coupon={"pool": "winback", "percent_off": 10},  # type: ignore[arg-type]
                        title="Picked for you", body="{{ items[0].title }}")  # fmt: skip
    settings = Settings.load(redis_url=args.redis_url, key_prefix=prefix,
                             segments=(segment,), campaigns=(campaign,),
                             coupon_pools=(CouponPool(name="winback", budget_count=10**9),),
                             index_store=Path("/nonexistent"))  # fmt: skip
    rt = Runtime.open(settings)
    figures: dict[str, Any] = {"shoppers": args.shoppers}
    try:
        from worker.service import ingest

        now = time.time()
        used_before = int(rt.redis.info("memory")["used_memory"])  # type: ignore[index]
        started = time.perf_counter()
        write_shoppers(rt, args.shoppers, now)
        catalog = [{"item_id": f"i{n}", "title": f"Item {n}", "category": CATEGORIES[n % 12],
                    "price": 5 + n % 50, "stock": 10} for n in range(500)]  # fmt: skip
        for start in range(0, len(catalog), 250):
            ingest.upsert_items(rt, catalog[start : start + 250], now)
        figures["write_s"] = time.perf_counter() - started

        started = time.perf_counter()
        users = [f"b{n}" for n in range(args.shoppers)]
        for start in range(0, len(users), CHUNK):
            rt.segment_index.refresh_activity(users[start : start + CHUNK], now)
        figures["index_activity_s"] = time.perf_counter() - started
        started = time.perf_counter()
        for user in users[: min(5000, len(users))]:  # one registration a call, as it comes
            rt.segment_index.refresh_devices([user], now)
        figures["index_devices_per_s"] = min(5000, len(users)) / (time.perf_counter() - started)
        figures["segment_index_bytes_per_shopper"] = index_bytes(rt) / args.shoppers
        used = int(rt.redis.info("memory")["used_memory"]) - used_before  # type: ignore[index]
        figures["redis_bytes_per_shopper_all_state"] = used / args.shoppers

        from worker.segmenting.rfm import compute_cuts

        started = time.perf_counter()
        compute_cuts(rt.redis, rt.keys, now)
        figures["rfm_cuts_s"] = time.perf_counter() - started
        started = time.perf_counter()
        size, _ = rt.segment_query().size_and_sample("lapsed", now, 10)
        figures["segment_s"], figures["segment_size"] = time.perf_counter() - started, size

        from worker.service.dry_run_pool import pooled

        pool = pooled(settings, args.workers)
        for label, fire in (("dry_run_one_process", None),
                            (f"dry_run_{args.workers}_processes", pool)):  # fmt: skip
            started = time.perf_counter()
            report = dry_run(rt.redis, rt.keys, rt.runs(), rt.segment_query(), rt.firer(),
                             campaign, now, now, immediate=True, fire=fire)  # fmt: skip
            figures[f"{label}_s"] = time.perf_counter() - started
            figures[f"{label}_per_shopper_ms"] = figures[f"{label}_s"] / max(1, size) * 1000
        figures["dry_run_outcomes"] = report["outcomes"]
    finally:
        rt.close()
        import redis

        client = redis.Redis.from_url(args.redis_url)
        for keys in _batched(client.scan_iter(f"{prefix}:*", count=10_000), 10_000):
            client.unlink(*keys)
    if args.fanout:
        figures["fanout"] = measure_fanout(
            args.fanout, args.layout, args.profile, rates=args.fanout_rate
        )
    for name, value in figures.items():
        print(f"{name:28s} {value if isinstance(value, dict) else round(float(value), 3)}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2))
    print(f"wrote {args.json}")


def index_bytes(rt: Runtime) -> int:
    """Bytes the segment indexes take in Redis (`MEMORY USAGE` of every key of every
    shard, all of each set sampled)."""
    total = 0
    for shard in range(rt.keys.shards):
        for key in rt.redis.scan_iter(rt.keys.segment(shard).base + ":*", count=1000):
            total += int(rt.redis.memory_usage(key, samples=0) or 0)
    return total


FANOUT_SEGMENT = """
[[segments]]
name = "buyers"
min_orders = 1
"""


def fanout_campaign(n: int, rate: float | None) -> str:
    """The TOML of fan-out campaign `n` (`rate_per_s` = `rate`; None: no limit)."""
    limit = "" if rate is None else f"rate_per_s = {rate!r}\n"
    return f"""
[[campaigns]]
name = "fanout{n}"
segment = "buyers"
channels = ["fcm"]
title = "Picked for you"
body = "{{{{ items[0].title }}}}"
{limit}"""


def measure_fanout(
    shoppers: int, layout_spec: str, profile: Path | None, rates: Sequence[float] = ()
) -> dict[str, Any]:
    """A campaign run to `shoppers` at the local FCM gateway (without a rate limit, then
    once with each of `rates` as its `rate_per_s`, each to fresh shoppers), the no-op
    ceiling and the batched `track_batch` rate, on one private Redis and the same worker
    nodes."""
    import tempfile
    import tomllib

    import realtime
    from realtime_stack import Case, Shop, local_gateway, write_bench_config

    from tests.redis_server import redis_server

    layout = realtime.parse_layout(layout_spec)
    out: dict[str, Any] = {"shoppers": shoppers, "layout": layout_spec}
    with redis_server() as url, tempfile.TemporaryDirectory(prefix="pushrec-fan-") as tmp_name:
        tmp = Path(tmp_name)
        shop = Shop(tmp)
        config = write_bench_config(tmp / "pushrec.toml")
        runs = [None, *rates]
        extra = FANOUT_SEGMENT + "".join(fanout_campaign(n, r) for n, r in enumerate(runs))
        config.write_text(config.read_text() + extra)
        raw = tomllib.loads(extra)
        with local_gateway(tmp / "gateways") as gateway:
            for n, rate in enumerate(runs):
                campaign = Campaign.model_validate(raw["campaigns"][n])
                case = Case(url, shop, gateway, config, tmp, profile=profile)
                try:
                    run = _fanout_run(case, shop, raw, campaign, shoppers, layout, tag=f"f{n}")
                finally:
                    case.close()
                out["run" if rate is None else f"run_at_{rate:g}_per_s"] = run
            args = argparse.Namespace(noop=10_000, saturation_batched=max(5000, shoppers),
                                      batch=100, history=3)  # fmt: skip
            ceilings = {"noop": realtime.measure_noop,
                        "track_batch": realtime.measure_saturation_batched}  # fmt: skip
            for name, measure in ceilings.items():
                case = Case(url, shop, gateway, config, tmp)
                try:
                    out[name] = measure(case, shop, layout, args)
                finally:
                    case.close()
    return out


def _fanout_run(
    case: Any, shop: Any, raw: dict[str, Any], campaign: Campaign, shoppers: int, layout: Any,
    tag: str,
) -> dict[str, Any]:  # fmt: skip
    """One campaign run to `shoppers` fresh shoppers, sent by a real scheduler and workers:
    messages/s at the gateway between the 10% and 90% receipts, and worker CPU a message."""
    import realtime
    from realtime_stack import cpu_ms_per_unit

    tokens = case.seed(shop, shop.shoppers(tag, shoppers, 3))
    rt = Runtime.open(case.rt.settings.model_copy(update={
        "segments": tuple(Segment.model_validate(s) for s in raw["segments"]),
        "campaigns": (campaign,)}))  # fmt: skip
    try:
        case.start(layout, tag)
        _wait_for_workers(case)  # else a paced run's first seconds queue up and then burst
        started = time.perf_counter()
        run = rt.runs().start(campaign, time.time(), time.time(), immediate=True)
        planned_s = time.perf_counter() - started
        stats = rt.keys.rule_stats(campaign.name)
        marks: dict[float, dict[str, float]] = {}
        audience = int(run["audience"])
        done = case.wait(lambda: int(rt.redis.hget(stats, "delivered") or 0), audience,  # type: ignore[arg-type]
                         cpu_marks=marks)  # fmt: skip
        case.stop()
        receipts = case.receipts()
        stamps = [receipts[t] for t in tokens if t in receipts]
        return {
            "rate_per_s": campaign.rate_per_s,
            "audience": audience,
            "plan_s": planned_s,
            "delivered": done,
            "messages_per_s": realtime._between(stamps, len(stamps)),
            "wall_s": max(stamps) - min(stamps) if stamps else 0.0,
            "cpu_ms_per_message": cpu_ms_per_unit(marks, 0.8 * audience),
        }
    finally:
        rt.close()


def _wait_for_workers(case: Any, timeout_s: float = 60.0) -> None:
    """Until the nodes of `case` run tasks: four no-ops through the campaign's queue."""
    from celery import Celery

    from worker import contract

    app = Celery("bench-ready", set_as_current=False)
    app.conf.update(broker_url=contract.celery_url(case.url), task_serializer="json",
                    broker_transport_options={"global_keyprefix": f"{case.prefix}:"})  # fmt: skip
    queue = case.queues[contract.TASK_QUEUES[contract.CAMPAIGN_FIRE]]
    ids = [app.send_task(contract.NOOP, queue=queue, ignore_result=False).id for _ in range(4)]
    deadline = time.monotonic() + timeout_s
    try:
        while not all(case.rt.redis.exists(f"{case.prefix}:celery-task-meta-{i}") for i in ids):
            if time.monotonic() > deadline:
                raise RuntimeError("the worker nodes did not start")
            time.sleep(0.1)
    finally:
        app.close()


def _batched(items: Any, size: int) -> Any:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


if __name__ == "__main__":
    main()
