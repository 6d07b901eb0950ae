"""`pushrec scheduler` (leader-elected periodic jobs) and `pushrec run` (everything)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from worker.cli.common import add_metrics_port, load_settings_with_redis, serve_metrics_if_asked

if TYPE_CHECKING:
    from worker.contract import Enqueue
    from worker.service.runtime import Runtime
    from worker.settings import Settings


def register(subparsers: Any) -> None:
    scheduler = subparsers.add_parser(
        "scheduler",
        help="move due delayed jobs to the queues and run periodic jobs (one leader)",
    )
    scheduler.add_argument("--loglevel", default="INFO")
    add_metrics_port(scheduler)
    scheduler.set_defaults(handler=run_scheduler)

    run = subparsers.add_parser(
        "run",
        help="a worker and a scheduler together (embedded Redis unless PUSHREC_REDIS_URL)",
    )
    run.add_argument("--concurrency", "-c", type=int, default=os.cpu_count() or 1)
    run.add_argument("--loglevel", default="INFO")
    add_metrics_port(run)
    run.set_defaults(handler=run_all)


def run_scheduler(args: argparse.Namespace) -> int:
    from apscheduler.triggers.cron import CronTrigger

    from worker.contract import REBUILD_INDEX
    from worker.firing.index_store import open_index_store
    from worker.service.app import create_app
    from worker.service.housekeeping import run_housekeeping
    from worker.service.logs import configure_logging, log_format
    from worker.service.scheduler import Scheduler, drain_due, resend_stuck
    from worker.store.lease import Lease

    settings, server = load_settings_with_redis()
    configure_logging(args.loglevel, log_format(settings.log_format, service=True))
    app = create_app(settings)
    rt = app.runtime()
    jobs: list[tuple[Callable[[], Any], dict[str, Any]]] = [
        (
            lambda: drain_due(rt.delayed, app.enqueue, settings.now),
            {"trigger": "interval", "seconds": settings.scheduler_poll_s},
        )
    ]
    jobs.append(
        (lambda: resend_stuck(rt.outbox, app.enqueue), {"trigger": "interval", "seconds": 60})
    )
    if settings.coupon_pools:  # unredeemed codes past expiry stop counting as outstanding
        jobs.append(
            (lambda: rt.coupons.expire(settings.now()), {"trigger": "interval", "seconds": 60})
        )
    if settings.index_rebuild_cron:
        jobs.append(
            (
                lambda: app.enqueue(REBUILD_INDEX, {}),
                {"trigger": CronTrigger.from_crontab(settings.index_rebuild_cron, timezone="UTC")},
            )
        )
    jobs.extend(campaign_jobs(settings, rt, app.enqueue))
    lock = Lease(rt.redis, rt.keys.scheduler_lock, settings.scheduler_lease_s)
    store = open_index_store(settings)
    jobs.append(
        (
            lambda: run_housekeeping(rt.redis, rt.keys, settings, store, rt.metrics, lock.owner),
            {"trigger": "interval", "seconds": settings.housekeeping_interval_s},
        )
    )
    scheduler = Scheduler(lock, jobs)
    signal.signal(signal.SIGTERM, lambda *_: scheduler.stop())
    metrics = serve_metrics_if_asked(app, args.metrics_port)
    try:
        scheduler.run()
    except KeyboardInterrupt:
        pass
    finally:
        if metrics is not None:
            metrics()
        rt.close()
        if server is not None:
            server.stop()
    return 0


def campaign_jobs(
    settings: Settings, rt: Runtime, enqueue: Enqueue
) -> list[tuple[Callable[[], Any], dict[str, Any]]]:
    """The leader's segment and campaign duties: campaign runs (every second), RFM cut
    points (every `rfm_refresh_s`), the sweep of expired shoppers from the segment
    indexes (hourly)."""
    from worker.campaigning.duties import tick
    from worker.segmenting.rfm import compute_cuts

    runs = rt.runs()
    jobs: list[tuple[Callable[[], Any], dict[str, Any]]] = [
        (
            lambda: rt.segment_index.sweep_expired(settings.now(), settings.user_ttl_s),
            {"trigger": "interval", "seconds": 3600},
        )
    ]
    if settings.segments:
        jobs.append(
            (
                lambda: compute_cuts(rt.redis, rt.keys, settings.now()),
                {"trigger": "interval", "seconds": settings.rfm_refresh_s},
            )
        )
    if settings.campaigns:
        jobs.append(
            (
                lambda: tick(rt.redis, rt.keys, runs, settings.campaigns, settings.now(), enqueue),
                {"trigger": "interval", "seconds": 1},
            )
        )
    return jobs


def run_all(args: argparse.Namespace) -> int:
    """The scheduler as a child process, the worker in this one; both share the Redis."""
    from worker.cli.serve import run_worker

    settings, server = load_settings_with_redis()
    env = {**os.environ, "PUSHREC_REDIS_URL": str(settings.redis_url)}
    child = subprocess.Popen(
        # the worker serves the metrics (the same figures: exposition.py)
        [sys.executable, "-m", "worker", "scheduler", f"--loglevel={args.loglevel}",
         "--metrics-port=0"],
        env=env,
    )  # fmt: skip
    try:
        worker_args = argparse.Namespace(
            queues=None, concurrency=args.concurrency, pool="prefork", name=None,
            loglevel=args.loglevel, metrics_port=args.metrics_port,
        )  # fmt: skip
        return run_worker(worker_args)
    finally:
        child.terminate()
        child.wait(timeout=30)
        if server is not None:
            server.stop()
