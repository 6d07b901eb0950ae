"""Fixtures for worker tests: settings on the test Redis, a runtime, real worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.worker.realtime import Gateways

from worker.client import PushrecClient
from worker.redis_urls import is_cluster_url
from worker.service.runtime import Runtime
from worker.settings import Settings


@pytest.fixture
def settings(
    redis_url: str, key_prefix: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Settings:
    """On a cluster (`redis_kinds` modules), Celery's broker is the single node."""
    broker = None
    if is_cluster_url(redis_url):
        broker = request.getfixturevalue("redis_node_url")
    return Settings.load(
        redis_url=redis_url,
        broker_url=broker,
        key_prefix=key_prefix,
        broker_key_prefix=f"{key_prefix}:",
        state_dir=tmp_path / "state",
        queue_activity=f"{key_prefix}.activity",
        queue_push=f"{key_prefix}.push",
        queue_maintenance=f"{key_prefix}.maintenance",
    )


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.open(settings)
    yield rt
    rt.close()


def worker_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHREC_")}
    env.update(extra or {})
    env.update(
        PUSHREC_REDIS_URL=str(settings.redis_url),
        **({"PUSHREC_BROKER_URL": settings.broker_url} if settings.broker_url else {}),
        PUSHREC_KEY_PREFIX=settings.key_prefix,
        PUSHREC_BROKER_KEY_PREFIX=settings.broker_key_prefix,
        PUSHREC_STATE_DIR=str(settings.state_dir),
        PUSHREC_QUEUE_ACTIVITY=settings.queue_activity,
        PUSHREC_QUEUE_PUSH=settings.queue_push,
        PUSHREC_QUEUE_MAINTENANCE=settings.queue_maintenance,
        PUSHREC_VISIBILITY_TIMEOUT_S=str(settings.visibility_timeout_s),
        PUSHREC_TASK_TIME_LIMIT_S=str(settings.task_time_limit_s),
        PUSHREC_TASK_MAX_RETRIES=str(settings.task_max_retries),
        PUSHREC_TASK_RETRY_BACKOFF_MAX_S=str(settings.task_retry_backoff_max_s),
    )
    return env


def node_name(name: str) -> str:
    """A Celery node name unique to this test session: two suites running at once on one
    machine (two checkouts) must not claim the same node's pidbox queue on RabbitMQ."""
    return f"{name}-{os.getpid()}@%h"


class WorkerProcess:
    """A real `pushrec worker` subprocess; its log is kept for failure messages."""

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        name: str,
        concurrency: int,
        *,
        env: dict[str, str] | None = None,
        command: tuple[str, ...] = (),
        ready: str = " ready.",
        module: str = "worker",
        prefix: tuple[str, ...] = (),
    ) -> None:
        """`command` replaces `pushrec worker`'s arguments; `module` the program run as
        `python -m` (`celery`, for a test app); `prefix` goes before the interpreter
        (`ip netns exec NS`: a worker on another host of the multi-host test)."""
        self.log_path = log_path
        self._log = log_path.open("wb")
        self._ready = ready
        args = command or (
            "worker",
            f"--concurrency={concurrency}",
            f"--name={node_name(name)}",
            "--loglevel=INFO",
        )
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", module, *args],
            env=worker_env(settings, env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self._wait_ready()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        """The log as JSON records (a process off a terminal logs JSON lines); a line
        that is not one fails the test, except Celery's shutdown notice, which its signal
        handler prints to stdout itself ("worker: Warm shutdown (MainProcess)")."""
        lines = [line for line in self.log().splitlines() if line.strip()]
        return [json.loads(line) for line in lines if not line.startswith("worker: ")]

    def errors(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["level"] in {"ERROR", "CRITICAL"}]

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self._ready not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"worker did not start:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the whole process group, as an OOM kill or power loss would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


@pytest.fixture
def start_worker(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(name: str = "w1", concurrency: int = 2) -> WorkerProcess:
        worker = WorkerProcess(settings, tmp_path / f"{name}.log", name, concurrency)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def producer_for(settings: Settings, **options: Any) -> PushrecClient:
    """A producer on `settings`' broker, key prefix and queues (`options`: more of
    PushrecClient's, e.g. `result_backend`)."""
    return PushrecClient(
        settings.effective_broker_url,
        broker_key_prefix=settings.broker_key_prefix,
        queues={
            "activity": settings.queue_activity,
            "push": settings.queue_push,
            "maintenance": settings.queue_maintenance,
        },
        **options,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[PushrecClient]:
    with producer_for(settings, result_backend=settings.result_backend_url) as producer:
        yield producer


def wait_for(condition: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    """The local gateways of `push/testing/`, one set per test module (tests reset them)."""
    from push.testing.serve import local_gateways
    from tests.worker.realtime import Gateways  # realtime.py imports this module

    with local_gateways(tmp_path_factory.mktemp("gateways")) as state:
        gw = Gateways(state)
        yield gw
        gw.close()


@pytest.fixture
def recording_shop(
    settings: Settings, gateways: Gateways, tmp_path: Path
) -> Iterator[tuple[Runtime, list[tuple[str, dict[str, Any]]]]]:
    """A runtime whose `enqueue` records instead of sending (the test runs the tasks),
    with a published planted index."""
    from tests.worker.realtime import gateway_shop  # realtime.py imports this module

    queued: list[tuple[str, dict[str, Any]]] = []
    enqueue = lambda task, kwargs: queued.append((task, kwargs))  # noqa: E731
    with gateway_shop(settings, gateways, tmp_path / "index", enqueue) as rt:
        yield rt, queued
