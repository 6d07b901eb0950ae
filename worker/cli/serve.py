"""`pushrec worker`: run a Celery worker on pushrec's queues."""

from __future__ import annotations

import argparse
import gc
import logging
import os
from typing import Any

from worker.cli.common import add_metrics_port, load_settings_with_redis, serve_metrics_if_asked
from worker.settings import Settings, redact_url


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run a worker (embedded Redis unless PUSHREC_REDIS_URL is set)",
        description="Consume pushrec's queues. With no PUSHREC_REDIS_URL an embedded "
        "redis-server is started under PUSHREC_STATE_DIR and stopped on exit.",
    )
    parser.add_argument(
        "--queues", help="comma-separated queue names (default: all three of pushrec's)"
    )
    parser.add_argument("--concurrency", "-c", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    parser.add_argument("--name", help="node name (default: pushrec.<pid>@<host>)")
    parser.add_argument("--loglevel", default="INFO")
    add_metrics_port(parser)
    parser.set_defaults(handler=run_worker)


def with_delivery_mode(settings: Settings, queues: list[str]) -> Settings:
    """Settle `deliver_inline` for a worker on `queues` where the settings leave it open:
    inline where the worker also consumes the push queue."""
    if settings.deliver_inline is not None:
        return settings
    return settings.model_copy(update={"deliver_inline": settings.queue_push in queues})


def tune_gc() -> None:
    """A task allocates many short-lived objects over a large long-lived heap (modules,
    later the index's id maps): collect the young generation every 50,000 allocations
    instead of 700 (bench/hot_path.py: about 15% less CPU per event in track_batch), and
    keep what start-up built out of every collection (pool children forked from here
    share those pages, untouched by a collector)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def run_worker(args: argparse.Namespace) -> int:
    from worker.service.app import create_app
    from worker.service.logs import keep_for_celery, log_format

    settings, server = load_settings_with_redis()
    fmt = log_format(settings.log_format, service=True)
    keep_for_celery(args.loglevel, fmt)
    queues = args.queues or ",".join(
        [settings.queue_activity, settings.queue_push, settings.queue_maintenance]
    )
    settings = with_delivery_mode(settings, queues.split(","))
    logging.getLogger("pushrec").info(
        "redis %s%s, queues %s, %s",
        redact_url(settings.redis_url),
        " (embedded)" if server else "",
        queues,
        "messages sent in the task that queues them"
        if settings.deliver_inline
        else "messages sent by deliver tasks",
    )
    app = create_app(settings)
    tune_gc()
    argv = [
        *(["--quiet"] if fmt == "json" else []),  # the start-up banner is not a JSON line
        "worker",
        f"--queues={queues}",
        f"--concurrency={args.concurrency}",
        f"--pool={args.pool}",
        f"--hostname={args.name or f'pushrec.{os.getpid()}@%h'}",
        f"--loglevel={args.loglevel}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    metrics = serve_metrics_if_asked(app, args.metrics_port)
    try:
        app.worker_main(argv)
    finally:
        if metrics is not None:
            metrics()
        if server is not None:
            server.stop()
    return 0
