"""Our command packer writes the bytes redis-py's own writes, and refuses what it refuses."""

from __future__ import annotations

import re
from enum import IntEnum
from typing import Any

import pytest
import redis
from redis.connection import Connection

from worker.store.client import connect_state
from worker.store.command_packer import PACKER

# On a cluster too: its nodes get the packer through `PackedConnection`, a single node
# through redis-py's `command_packer`.
pytestmark = pytest.mark.redis_kinds


class Level(IntEnum):
    LOW = 1


ARGS: list[tuple[Any, ...]] = [
    ("GET", "k"),
    ("SET", "pr:{u1}:state", "v", "PX", 1500),
    ("HSET", "k", "naïve", "日本語 text\r\nwith a newline"),
    ("ZADD", "k", 1.5, "m", -0.0, "n", 1e300, "o", float("inf"), "p"),
    ("HINCRBY", "k", "f", -(10**30)),
    ("EVALSHA", "a" * 40, 2, "k1", "k2", b"\x00\xff raw", 0, 1733300000.125),
    ("SET", "k", memoryview(b"view")),
    ("SET", "k", bytearray(b"array")),
    ("SET", "k", "x" * 10_000),  # past the buffer cutoff
    ("SCRIPT LOAD", "return 1"),  # a two-word command name
    ("CLIENT SETINFO", "LIB-NAME", "pushrec"),
    ("CLIENT\tSETINFO", "LIB-VER", "1"),  # any whitespace splits a name, as redis-py does
    (b"GET", b"k"),  # a name in bytes
    ("HSET", "k", "level", Level.LOW),  # an int subclass: hiredis refuses it
]


@pytest.mark.parametrize("args", ARGS, ids=[f"{i}-{a[0]!r}" for i, a in enumerate(ARGS)])
def test_packs_the_bytes_redis_py_packs(args: tuple[Any, ...]) -> None:
    theirs = Connection()._command_packer.pack(*args)  # type: ignore[no-untyped-call]
    assert b"".join(PACKER.pack(*args)) == b"".join(bytes(chunk) for chunk in theirs)


@pytest.mark.parametrize("bad", [True, None, object(), {"a": 1}])
def test_refuses_what_redis_py_refuses_with_its_error(bad: Any) -> None:
    with pytest.raises(redis.DataError) as theirs:
        Connection()._command_packer.pack("SET", "k", bad)  # type: ignore[no-untyped-call]
    with pytest.raises(redis.DataError, match=re.escape(str(theirs.value))):
        PACKER.pack("SET", "k", bad)


def test_a_state_client_packs_with_it_and_round_trips(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    packed: list[str | bytes] = []
    original = PACKER.pack

    def pack(*args: Any) -> list[bytes | memoryview]:
        packed.append(args[0])
        return original(*args)

    monkeypatch.setattr(PACKER, "pack", pack)
    client = connect_state(redis_url)
    try:
        key = f"{key_prefix}:packed"
        pipe = client.pipeline(transaction=False)
        pipe.hset(key, mapping={"naïve": "日本語", "n": 3, "f": 0.1})
        pipe.hincrby(key, "n", 2)
        pipe.hgetall(key)
        pipe.delete(key)
        assert pipe.execute()[1:3] == [5, {"naïve": "日本語", "n": "5", "f": "0.1"}]
        assert packed[-4:] == ["HSET", "HINCRBY", "HGETALL", "DEL"]
    finally:
        client.close()
