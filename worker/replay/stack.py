"""The processes a replay runs on: an embedded Redis (unless one is given), the local
gateways of `push/testing/`, worker nodes and the scheduler, each a real process started
here and stopped here, whatever happens (an error, Ctrl-C, SIGTERM).

Every process runs in a session of its own, so a Ctrl-C in the terminal reaches only the
replay, which then stops them in order (workers first, so nothing is left half-sent; the
gateways and Redis last) and waits for each; a process that does not stop is killed with
its whole group (prefork children included).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from worker.clock import SimulatedClock
from worker.store.embedded import EmbeddedRedis

log = logging.getLogger(__name__)

_READY_TIMEOUT_S = 90.0
_STOP_TIMEOUT_S = 30.0


class StackError(Exception):
    """A process of the stack did not start (the message quotes its log)."""


@dataclass
class Process:
    """One started process: its name, handle and log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL it if it has not ended in time."""
        if self.alive():
            _signal_group(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _signal_group(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        # prefork children outlive a parent that was killed: sweep the group
        _signal_group(self.popen.pid, signal.SIGKILL)
        self._log.close()


def _signal_group(pid: int, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


@dataclass(frozen=True)
class StackSpec:
    """What to start. `run_dir` holds logs, gateway credentials and (embedded) Redis;
    `env` is added to every process's environment (the config file, the index store)."""

    run_dir: Path
    clock_factory: Callable[[], SimulatedClock]  # called once set-up is done, before workers
    env: Mapping[str, str]
    redis_url: str | None = None  # None: an embedded server under run_dir
    workers: int = 1
    concurrency: int = 2
    scheduler_poll_s: float = 0.01


@dataclass
class Stack:
    """The running processes, with what a producer needs to reach them."""

    redis_url: str
    env: dict[str, str]
    gateways: dict[str, object]
    processes: list[Process]
    redis_pid: int | None = None  # the embedded server's, when the stack started one

    def check(self) -> None:
        """Raise `StackError` if a worker or the scheduler has died."""
        for process in self.processes:
            if not process.alive():
                raise StackError(f"{process.name} exited:\n{process.log_text()[-3000:]}")

    def pids(self) -> list[int]:
        """Every process started, the embedded Redis included."""
        pids = [p.popen.pid for p in self.processes]
        return [*pids, self.redis_pid] if self.redis_pid is not None else pids


def _start(name: str, argv: list[str], env: Mapping[str, str], logs: Path) -> Process:
    path = logs / f"{name}.log"
    handle = path.open("wb")
    popen = subprocess.Popen(
        argv, env=dict(env), stdout=handle, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    return Process(name, popen, path, handle)


def _wait_ready(process: Process, marker: str) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while marker not in process.log_text():
        if not process.alive() or time.monotonic() > deadline:
            raise StackError(f"{process.name} did not start:\n{process.log_text()[-3000:]}")
        time.sleep(0.1)


def _gateways(run_dir: Path, logs: Path) -> tuple[Process, dict[str, object]]:
    """`python -m push.testing serve` in its own process; its state JSON (first line)."""
    process = _start(
        "gateways",
        [sys.executable, "-m", "push.testing", "serve", f"--state-dir={run_dir / 'gateways'}"],
        os.environ,
        logs,
    )
    state_file = run_dir / "gateways" / "gateways.json"
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while not (state_file.exists() and process.log_text().strip()):
        if not process.alive() or time.monotonic() > deadline:
            process.stop()
            raise StackError(f"the local gateways did not start:\n{process.log_text()[-3000:]}")
        time.sleep(0.05)
    # the file is complete once the state line is printed (written first)
    state: dict[str, object] = json.loads(state_file.read_text())
    return process, state


@contextmanager
def running_stack(spec: StackSpec, prepare: Callable[[Stack], None]) -> Iterator[Stack]:
    """Start Redis and the gateways, call `prepare(stack)` (set-up written straight to
    Redis), start the workers and the scheduler on `spec.clock_factory()`'s clock, yield
    the stack; stop everything on exit."""
    logs = spec.run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with ExitStack() as cleanup:
        url, redis_pid = spec.redis_url, None
        if url is None:
            server = EmbeddedRedis.start(spec.run_dir)
            cleanup.callback(server.stop)
            url = server.url
            redis_pid = server.process.pid if server.process is not None else None
        gateway_process, gateways = _gateways(spec.run_dir, logs)
        processes: list[Process] = []

        def stop_all() -> None:
            # workers and scheduler first, in reverse start order; the gateways after them
            for process in reversed(processes):
                process.stop()
            gateway_process.stop()

        cleanup.callback(stop_all)
        gateway_env = gateways["env"]
        assert isinstance(gateway_env, dict)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHREC_")}
        env.update(gateway_env)
        env.update(spec.env)
        stack = Stack(url, env, gateways, [gateway_process], redis_pid)
        prepare(stack)
        env.update(
            PUSHREC_REDIS_URL=url,
            PUSHREC_STATE_DIR=str(spec.run_dir / "state"),
            PUSHREC_SIMULATED_CLOCK=spec.clock_factory().model_dump_json(),
            PUSHREC_SCHEDULER_POLL_S=repr(spec.scheduler_poll_s),
            PUSHREC_INDEX_REBUILD_CRON="",
            PUSHREC_LOG_FORMAT="json",
        )
        python = [sys.executable, "-m", "worker"]
        for n in range(spec.workers):
            processes.append(
                _start(
                    f"worker{n}",
                    [
                        *python,
                        "worker",
                        f"--concurrency={spec.concurrency}",
                        f"--name=replay{n}.{os.getpid()}@%h",
                        "--loglevel=INFO",
                    ],
                    env,
                    logs,
                )
            )
        processes.append(_start("scheduler", [*python, "scheduler", "--loglevel=INFO"], env, logs))
        for process in processes:
            _wait_ready(process, "is the leader" if process.name == "scheduler" else " ready.")
        stack.processes = [*processes, gateway_process]
        yield stack


@contextmanager
def interrupts_as_keyboard() -> Iterator[None]:
    """Inside, SIGTERM raises KeyboardInterrupt as Ctrl-C does, so one path stops the
    replay cleanly either way."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
