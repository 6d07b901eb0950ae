"""What one Redis round trip costs the client in CPU: the floor of a bare socket with
hiredis's reader, redis-py's own pipeline, and the state store's client (`connect_state`:
a single node's pipeline on the thread's pinned connection), by commands per trip.

A single `track` makes 12 round trips (bench/hot_path.py); this says how much of their
CPU the system calls take, which no client can save, and how much the client adds.
CPU is the thread's (`time.thread_time`: user and system, so the kernel's socket work
counts and the wait for the answer does not), median of `--repeats`.

    PYTHONPATH=. python bench/redis_trip.py [--trips 3000] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import hiredis
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.redis_server import redis_server  # noqa: E402
from worker.store.client import connect_state  # noqa: E402

COMMANDS = (1, 5, 10)  # per trip: a single event's pipelines hold 1-11 (hot_path --functions)


def cpu_us_per_call(work: Callable[[], Any], calls: int, repeats: int) -> float:
    for _ in range(calls // 10):
        work()
    samples = []
    for _ in range(repeats):
        started = time.thread_time_ns()
        for _ in range(calls):
            work()
        samples.append((time.thread_time_ns() - started) / calls / 1000)
    return statistics.median(samples)


def bare_trip(sock: socket.socket, commands: int) -> Callable[[], list[Any]]:
    """Send `commands` HGETs at once and read their replies with hiredis, nothing else."""
    packed = hiredis.pack_command(("HGET", "trip:h", "f")) * commands
    reader = hiredis.Reader()

    def trip() -> list[Any]:
        sock.sendall(packed)
        replies: list[Any] = []
        while len(replies) < commands:
            reader.feed(sock.recv(65536))
            while (reply := reader.gets()) is not False:
                replies.append(reply)
        return replies

    return trip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trips", type=int, default=3000, help="round trips per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "redis_trip.json")
    args = parser.parse_args()
    rows = []
    with redis_server() as url:
        client = connect_state(url)
        stock = redis.Redis.from_url(url, decode_responses=True)
        client.hset("trip:h", "f", "v")
        where = urlsplit(url)
        sock = socket.create_connection((where.hostname or "127.0.0.1", where.port or 6379))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for commands in COMMANDS:

            def pipeline(on: redis.Redis, n: int = commands) -> list[Any]:
                pipe = on.pipeline(transaction=False)
                for _ in range(n):
                    pipe.hget("trip:h", "f")
                return pipe.execute()

            bare = cpu_us_per_call(bare_trip(sock, commands), args.trips, args.repeats)
            theirs = cpu_us_per_call(lambda: pipeline(stock), args.trips, args.repeats)
            ours = cpu_us_per_call(lambda: pipeline(client), args.trips, args.repeats)
            rows.append({"commands": commands, "bare_socket_us": round(bare, 1),
                         "redis_py_us": round(theirs, 1),
                         "state_client_us": round(ours, 1)})  # fmt: skip
        sock.close()
        stock.close()
        client.close()
    print(f"{'commands/trip':>13s} {'bare socket us':>15s} {'redis-py us':>12s} "
          f"{'state client us':>16s}")  # fmt: skip
    for r in rows:
        print(f"{r['commands']:13d} {r['bare_socket_us']:15.1f} {r['redis_py_us']:12.1f} "
              f"{r['state_client_us']:16.1f}")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"bench": "redis_trip", "results": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
