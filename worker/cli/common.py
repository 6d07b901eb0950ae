"""Helpers shared by the CLI sub-commands."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from worker.service.logs import configure_logging, log_format
from worker.settings import Settings, SettingsError
from worker.store.embedded import EmbeddedRedis, EmbeddedRedisError

if TYPE_CHECKING:
    from worker.service.app import PushrecApp


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"pushrec: {message}", file=sys.stderr)
    raise SystemExit(code)


def load_settings() -> Settings:
    """The validated settings, or exit 2 with the reasons. Warnings and errors are
    logged from here on in the configured format (services set their own level)."""
    try:
        settings = Settings.load()
    except SettingsError as exc:
        fail(str(exc))
    configure_logging("WARNING", log_format(settings.log_format, service=False))
    return settings


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def load_settings_with_redis() -> tuple[Settings, EmbeddedRedis | None]:
    """Settings with a Redis URL: the configured one, else an embedded server's
    (started, or joined if one already serves the state directory)."""
    settings = load_settings()
    if settings.redis_url is not None:
        return settings, None
    try:
        server = EmbeddedRedis.start(settings.state_dir)
    except EmbeddedRedisError as exc:
        fail(str(exc))
    return settings.with_redis(server.url), server


def add_metrics_port(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on this port (default: PUSHREC_METRICS_PORT; 0: off)",
    )


def serve_metrics_if_asked(app: PushrecApp, port: int | None) -> Callable[[], None] | None:
    """Serve the metrics on `port` (else the configured port) from a thread of this
    process; returns the function that stops it, or None when no port is set."""
    from worker.service.exposition import PushrecCollector, serve_metrics

    port = port if port is not None else app.settings.metrics_port
    if not port:
        return None
    collector = PushrecCollector.for_app(app)
    try:
        server = serve_metrics(collector, port)
    except OSError as exc:
        collector.close()
        fail(f"cannot serve metrics on port {port}: {exc}")
    logging.getLogger("pushrec").info("metrics on port %d", server.server_port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        collector.close()

    return stop
