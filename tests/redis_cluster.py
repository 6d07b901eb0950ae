"""A real Redis Cluster for the tests: three masters and one replica each, six
redis-servers with `--cluster-enabled yes` on free ports (of the loopback, or of an
address the caller names, with a command prefix such as `ip netns exec NS` for the
multi-host test), joined by `redis-cli --cluster create`, stopped and removed afterwards."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.redis_server import _free_port
from worker.store.embedded import find_redis_server

MASTERS = 3


@dataclass(frozen=True)
class Cluster:
    """The running cluster: `url` is what `PUSHREC_REDIS_URL` takes; `ports` every node's."""

    url: str
    ports: tuple[int, ...]
    host: str = "127.0.0.1"

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(self.host, port, decode_responses=True, socket_timeout=5)

    def role(self, port: int) -> str:
        return str(self.node(port).execute_command("ROLE")[0])

    def replicas(self) -> list[int]:
        return [p for p in self.ports if self.role(p) == "slave"]

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every node says `cluster_state:ok` and every master has its replica."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                states = [self.node(p).cluster("info")["cluster_state"] for p in self.ports]
                if states == ["ok"] * len(self.ports) and len(self.replicas()) == MASTERS:
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis cluster did not reach cluster_state:ok")
            time.sleep(0.1)


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = _free_port()
        if port + 10_000 > 65_535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port


def _start_node(
    stack: ExitStack, folder: Path, host: str, port: int, prefix: tuple[str, ...]
) -> bool:
    """Start a node on `port`; False if it exited at once (the port was taken since it
    was found free: by another test process, or found twice)."""
    folder.mkdir()
    process = subprocess.Popen(
        [*prefix, find_redis_server(), "--port", str(port), "--bind", host,
         "--protected-mode", "no",  # the bind address says who may connect
         "--dir", str(folder), "--cluster-enabled", "yes",
         "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "3000",
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip

    def stop() -> None:
        process.terminate()
        process.wait(timeout=10)

    stack.callback(stop)
    deadline = time.monotonic() + 10
    while True:
        try:
            answered = redis.Redis(host, port, socket_connect_timeout=0.5, decode_responses=True)
            if answered.ping():  # ours, not another server on a port taken since
                return Path(answered.config_get("dir")["dir"]).resolve() == folder.resolve()
        except redis.RedisError:
            pass
        if process.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise RuntimeError(f"cluster node on port {port} did not start")
        time.sleep(0.05)


@contextmanager
def redis_cluster(host: str = "127.0.0.1", prefix: tuple[str, ...] = ()) -> Iterator[Cluster]:
    """Nodes bound to `host`, each started as `prefix + redis-server ...`; the ports are
    chosen free on the loopback (in a fresh network namespace every port is free)."""
    cli = shutil.which("redis-cli")
    if cli is None:
        raise RuntimeError(
            "redis-cli not found: the cluster tests need it (apt-get install redis-tools)"
        )
    with tempfile.TemporaryDirectory(prefix="pushrec-test-cluster-") as tmp, ExitStack() as stack:
        started: list[int] = []
        tried: set[int] = set()
        while len(started) < 2 * MASTERS:
            port = _cluster_port()
            if port in tried:
                continue
            tried.add(port)
            if _start_node(stack, Path(tmp) / str(port), host, port, prefix):
                started.append(port)
            elif len(tried) > 20 * MASTERS:
                raise RuntimeError(f"no free port kept for a cluster node (tried {sorted(tried)})")
        ports = tuple(started)
        subprocess.run(
            [*prefix, cli, "--cluster", "create", *(f"{host}:{p}" for p in ports),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        seeds = ",".join(f"{host}:{p}" for p in ports[:MASTERS])
        cluster = Cluster(f"redis+cluster://{seeds}", ports, host)
        cluster.wait_ok()
        yield cluster
