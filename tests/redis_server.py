"""A real Redis for the tests: the one named by PUSHREC_REDIS_URL/REDIS_URL if it answers,
else a private redis-server started on a free loopback port for the test session."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from worker.store.client import connect_state
from worker.store.embedded import find_redis_server


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def redis_server() -> Iterator[str]:
    """Yield the URL of a Redis the tests may use; stop it afterwards if we started it."""
    for name in ("PUSHREC_REDIS_URL", "REDIS_URL"):
        url = os.environ.get(name)
        if url and _answers(url):
            yield url
            return
    with private_redis_server() as url:
        yield url


@contextmanager
def private_redis_server(*options: str) -> Iterator[str]:
    """A redis-server of our own on a free loopback port (no persistence, 64 databases),
    for a test that must break it or the session's; extra `options` go on its command line."""
    with tempfile.TemporaryDirectory(prefix="pushrec-test-redis-") as data_dir:
        port = _free_port()
        process = subprocess.Popen(
            [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1",
             "--dir", data_dir, "--save", "", "--appendonly", "no", "--databases", "64",
             *options],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"redis://127.0.0.1:{port}/0"
        try:
            deadline = time.monotonic() + 10
            while not _answers(url):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("test redis-server did not start")
                time.sleep(0.05)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=10)


def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key under `prefix` (on a cluster: on every master)."""
    client = connect_state(url)
    try:
        batch = list(client.scan_iter(match=f"{prefix}*", count=1000))
        while batch:
            client.delete(*batch[:1000])
            batch = batch[1000:]
    finally:
        client.close()
