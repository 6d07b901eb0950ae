"""A real Redis Cluster for the tests: three masters and one replica each, six
redis-servers with `--cluster-enabled yes` on free loopback ports, joined by
`redis-cli --cluster create`, stopped and removed afterwards."""

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

    def node(self, port: int) -> redis.Redis:
        return redis.Redis("127.0.0.1", port, decode_responses=True, socket_timeout=5)

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


def _start_node(stack: ExitStack, folder: Path, port: int) -> None:
    folder.mkdir()
    process = subprocess.Popen(
        [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1",
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
            if redis.Redis("127.0.0.1", port, socket_connect_timeout=0.5).ping():
                return
        except redis.RedisError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"cluster node on port {port} did not start")
        time.sleep(0.05)


@contextmanager
def redis_cluster() -> Iterator[Cluster]:
    cli = shutil.which("redis-cli")
    if cli is None:
        raise RuntimeError(
            "redis-cli not found: the cluster tests need it (apt-get install redis-tools)"
        )
    with tempfile.TemporaryDirectory(prefix="pushrec-test-cluster-") as tmp, ExitStack() as stack:
        ports = tuple(_cluster_port() for _ in range(2 * MASTERS))
        for port in ports:
            _start_node(stack, Path(tmp) / str(port), port)
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        cluster = Cluster(",".join(f"127.0.0.1:{p}" for p in ports[:MASTERS]), ports)
        cluster = Cluster(f"redis+cluster://{cluster.url}", ports)
        cluster.wait_ok()
        yield cluster
