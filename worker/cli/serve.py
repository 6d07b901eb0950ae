"""`pushrec worker`: run a Celery worker on pushrec's queues."""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import os
import platform
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


MMAP_THRESHOLD = 32 << 20
"""Blocks below this come from the heap (glibc's default starts at 128 KiB; 32 MiB is the
most it takes on a 64-bit system)."""
TRIM_THRESHOLD = 128 << 20
"""Free memory kept at the top of the heap before it goes back to the kernel."""


def tune_malloc() -> bool:
    """Keep the memory a task frees for the next task, on glibc. By default glibc maps a
    large block fresh and, when it is freed, raises its thresholds: later blocks of that
    size come from the heap, but free memory at the top of the heap beyond twice that
    size goes back to the kernel. A batch's score matrices (a few at once, each 100
    shoppers x the catalog in float64) passed that line, so every batch faulted their
    pages in again (figures: docs/realtime.md, "What one event costs"). Setting either
    threshold fixes both, so both are set. A worker's resident memory stays near its
    peak, up to `TRIM_THRESHOLD` more. Returns whether the settings took (False on other
    C libraries, left as they are)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    took_mmap = bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD))
    took_trim = bool(mallopt(m_trim_threshold, TRIM_THRESHOLD))
    return took_mmap and took_trim


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
    if not tune_malloc():
        logging.getLogger("pushrec").warning(
            "malloc left as it is (not glibc, or mallopt refused): batches fault their "
            "score matrices in again each time"
        )
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
