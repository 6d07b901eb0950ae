"""A single node's `PinnedPipeline` answers as redis-py's own pipeline does, errors
included, on a connection of the thread's own that it never leaves a reply on, that a
forked child does not share and that comes back after the server drops it."""

from __future__ import annotations

import enum
import gc
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from worker.store import pinned
from worker.store.client import connect_state
from worker.store.pinned import PinnedPipeline, PinnedRedis

Queue = Callable[[Any, str], None]


class _Flag(enum.IntEnum):
    ON = 1


def _reads_and_writes(pipe: Any, k: str) -> None:
    """Commands whose replies redis-py's callbacks reshape (dicts, floats, bools, pairs)."""
    pipe.set(f"{k}:s", "naïve 日本語")
    pipe.get(f"{k}:s")
    pipe.get(f"{k}:missing")
    pipe.set(f"{k}:nx", 1, nx=True)
    pipe.set(f"{k}:nx", 2, nx=True)
    pipe.hset(f"{k}:h", mapping={"a": 1, "b": "x"})
    pipe.hgetall(f"{k}:h")
    pipe.hgetall(f"{k}:none")
    pipe.hmget(f"{k}:h", ["a", "zz"])
    pipe.hincrbyfloat(f"{k}:h", "f", 0.5)
    pipe.zadd(f"{k}:z", {"m": 1.5, "n": -2})
    pipe.zrange(f"{k}:z", 0, -1, withscores=True)
    pipe.zrevrangebyscore(f"{k}:z", "+inf", "-inf", withscores=True)
    pipe.zscore(f"{k}:z", "m")
    pipe.zscore(f"{k}:z", "absent")
    pipe.expire(f"{k}:h", 60)
    pipe.expire(f"{k}:none", 60)
    pipe.ttl(f"{k}:h")
    pipe.exists(f"{k}:h", f"{k}:none")
    pipe.sadd(f"{k}:set", "a", "b")
    pipe.smembers(f"{k}:set")
    pipe.lpush(f"{k}:l", "1", "2")
    pipe.lrange(f"{k}:l", 0, -1)
    pipe.xadd(f"{k}:x", {"f": "v"}, id="1-1")
    pipe.xrange(f"{k}:x")
    pipe.set(f"{k}:big", "é" * 40_000)  # larger than redis-py's 6 kB send buffers
    # an IntEnum sends the command to redis-py's packer, whose large arguments come out
    # as their own chunks (a memoryview as it is)
    pipe.execute_command("HSET", f"{k}:hb", "flag", _Flag.ON, "blob", memoryview(b"\xff" * 9_000))
    pipe.strlen(f"{k}:big")
    pipe.hstrlen(f"{k}:hb", "blob")
    pipe.eval("return {1, 'two', {3}}", 0)
    pipe.dump(f"{k}:s")  # read undecoded (NEVER_DECODE)
    pipe.delete(f"{k}:s", f"{k}:missing")
    pipe.execute_command("set", f"{k}:lower", "v")  # a lower-case name: its callback all the same


def _errors(pipe: Any, k: str) -> None:
    """Replies that are errors, between good ones."""
    pipe.set(f"{k}:str", "v")
    pipe.hincrby(f"{k}:str", "f", 1)  # WRONGTYPE
    pipe.incr(f"{k}:str")  # not an integer
    pipe.get(f"{k}:str")
    pipe.eval("return redis.error_reply('mine')", 0)
    pipe.zadd(f"{k}:z", {"a": 1})
    pipe.mget([])  # the server's error, answered as [] (EMPTY_RESPONSE)


@pytest.fixture
def pinned_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of commands of each pipeline run on a pinned connection."""
    runs: list[int] = []
    original = PinnedPipeline._send_and_read

    def spied(self: PinnedPipeline, connection: Any, commands: Any) -> list[Any]:
        runs.append(len(commands))
        return original(self, connection, commands)

    monkeypatch.setattr(PinnedPipeline, "_send_and_read", spied)
    return runs


@pytest.fixture
def clients(redis_node_url: str) -> Iterator[tuple[redis.Redis, redis.Redis]]:
    lean = connect_state(redis_node_url)
    stock = redis.Redis.from_url(redis_node_url, decode_responses=True)
    assert isinstance(lean, PinnedRedis)
    try:
        yield lean, stock
    finally:
        lean.close()
        stock.close()


def _both(
    clients: tuple[redis.Redis, redis.Redis], key_prefix: str, queue: Queue, **execute: Any
) -> tuple[list[Any], list[Any]]:
    """The same commands through the pinned pipeline and through redis-py's."""
    out = []
    for name, client in zip(("lean", "stock"), clients, strict=True):
        pipe = client.pipeline(transaction=False)
        queue(pipe, f"{key_prefix}:{name}")
        out.append(pipe.execute(**execute))
    return out[0], out[1]


def test_replies_are_redis_pys(clients: tuple[redis.Redis, redis.Redis], key_prefix: str) -> None:
    assert isinstance(clients[0].pipeline(transaction=False), PinnedPipeline)
    lean, stock = _both(clients, key_prefix, _reads_and_writes)
    assert lean == stock
    assert lean[6] == {"a": "1", "b": "x"} and lean[11] == [("n", -2.0), ("m", 1.5)]
    assert isinstance(lean[-3], bytes)
    assert lean[-1] is True  # SET's "OK" through its callback


def test_error_replies_stay_in_place_or_raise_the_first_as_redis_py_does(
    clients: tuple[redis.Redis, redis.Redis], key_prefix: str, pinned_reads: list[int]
) -> None:
    lean, stock = _both(clients, key_prefix, _errors, raise_on_error=False)
    assert pinned_reads == [len(lean)]
    assert [type(r) for r in lean] == [type(r) for r in stock]
    assert [str(r) for r in lean] == [str(r) for r in stock]
    assert isinstance(lean[1], redis.ResponseError) and lean[3] == "v" and lean[5] == 1
    assert lean[6] == []

    raised = []
    for client in clients:
        with pytest.raises(redis.ResponseError) as caught:
            pipe = client.pipeline(transaction=False)
            _errors(pipe, f"{key_prefix}:raise")
            pipe.execute()
        raised.append(str(caught.value))
    assert raised[0] == raised[1]
    assert raised[0].startswith("Command # 2 (HINCRBY")
    # the pinned connection is in step
    assert clients[0].pipeline(transaction=False).get(f"{key_prefix}:raise:str").execute() == ["v"]


def test_a_callback_that_raises_drops_the_connection_not_the_next_callers_reply(
    clients: tuple[redis.Redis, redis.Redis], key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lean = clients[0]

    def broken(response: Any, **options: Any) -> Any:
        raise ValueError("a callback's bug")

    monkeypatch.setitem(lean.response_callbacks, "HGETALL", broken)
    connection = lean.pinned_connection()  # type: ignore[attr-defined]
    pipe = lean.pipeline(transaction=False)
    pipe.hgetall(f"{key_prefix}:h")
    pipe.set(f"{key_prefix}:after", "late reply")
    with pytest.raises(ValueError):
        pipe.execute()
    monkeypatch.undo()
    # closed, not kept with the SET's "OK" unread for the next pipeline to read
    assert connection._sock is None
    assert lean.get(f"{key_prefix}:after") == "late reply"
    assert lean.pipeline(transaction=False).get(f"{key_prefix}:after").execute() == ["late reply"]


def test_transactions_and_scripts_keep_working(
    clients: tuple[redis.Redis, redis.Redis], key_prefix: str
) -> None:
    lean = clients[0]
    with lean.pipeline(transaction=True) as tx:
        tx.incr(f"{key_prefix}:n")
        tx.incr(f"{key_prefix}:n")
        assert tx.execute() == [1, 2]
    script = lean.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    lean.script_flush()  # the pipeline loads it again first, as redis-py's does
    pipe = lean.pipeline(transaction=False)
    script(keys=[f"{key_prefix}:n"], args=[3], client=pipe)
    pipe.get(f"{key_prefix}:n")
    assert pipe.execute() == [5, "5"]


def _client_id(client: redis.Redis) -> int:
    [client_id] = client.pipeline(transaction=False).client_id().execute()
    return int(client_id)


def test_each_thread_pipelines_on_its_own_connection(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    lean = clients[0]
    ids: list[int] = []
    thread = threading.Thread(target=lambda: ids.append(_client_id(lean)))
    thread.start()
    thread.join()
    mine = _client_id(lean)
    assert ids and ids[0] != mine
    assert _client_id(lean) == mine  # kept between pipelines


def test_a_forked_child_makes_its_own_connection(
    clients: tuple[redis.Redis, redis.Redis],
) -> None:
    lean = clients[0]
    parents = _client_id(lean)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.write(write_end, str(_client_id(lean)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    childs = int(os.read(read_end, 64))
    os.close(read_end)
    os.waitpid(child, 0)
    assert childs != parents
    assert _client_id(lean) == parents  # the parent's connection is untouched


def test_a_connection_dropped_while_in_use_fails_one_pipeline_then_comes_back(
    clients: tuple[redis.Redis, redis.Redis], key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lean, stock = clients
    monkeypatch.setattr(pinned, "IDLE_CHECK_S", math.inf)  # used just now, however slow CI is
    stock.client_kill_filter(_id=_client_id(lean))
    pipe = lean.pipeline(transaction=False)
    pipe.set(f"{key_prefix}:k", "v")
    with pytest.raises(redis.ConnectionError):
        pipe.execute()
    assert lean.pipeline(transaction=False).set(f"{key_prefix}:k", "w").execute() == [True]


def test_a_connection_dropped_during_a_pause_is_found_and_replaced_before_use(
    clients: tuple[redis.Redis, redis.Redis], key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lean, stock = clients
    before = _client_id(lean)
    stock.client_kill_filter(_id=before)
    monkeypatch.setattr(pinned, "IDLE_CHECK_S", 0.0)  # the pause
    assert lean.pipeline(transaction=False).set(f"{key_prefix}:k", "v").execute() == [True]
    assert _client_id(lean) != before


def test_close_closes_the_pinned_connections(redis_node_url: str) -> None:
    client = connect_state(redis_node_url)
    assert isinstance(client, PinnedRedis)
    connection = client.pinned_connection()
    client.pipeline(transaction=False).ping().execute()
    assert connection._sock is not None  # type: ignore[attr-defined]
    client.close()
    assert connection._sock is None  # type: ignore[attr-defined]


def test_transactions_scripts_and_himport_go_to_redis_pys_pipeline(
    clients: tuple[redis.Redis, redis.Redis], key_prefix: str, pinned_reads: list[int]
) -> None:
    lean = clients[0]
    with lean.pipeline(transaction=True) as tx:
        tx.set(f"{key_prefix}:t", 1).execute()
    script = lean.register_script("return 1")
    pipe = lean.pipeline(transaction=False)
    script(keys=[], args=[], client=pipe)
    pipe.execute()
    pipe = lean.pipeline(transaction=False)
    pipe.execute_command("himport set", "fs", f"{key_prefix}:h", "v")  # any case, one name
    pipe.execute(raise_on_error=False)
    assert pinned_reads == []
    lean.pipeline(transaction=False).ping().execute()
    assert pinned_reads == [1]


def test_a_threads_connection_closes_when_it_ends_or_the_client_closes(
    redis_node_url: str,
) -> None:
    client = connect_state(redis_node_url)
    assert isinstance(client, PinnedRedis)
    ended: list[Any] = []

    def pipeline_once() -> None:
        client.pipeline(transaction=False).ping().execute()
        ended.append(client.pinned_connection())

    thread = threading.Thread(target=pipeline_once)
    thread.start()
    thread.join()
    [connection] = ended
    del ended[:], connection  # the thread's own reference went with it
    gc.collect()
    assert len(client._pinned) == 0  # type: ignore[attr-defined]

    go_on = threading.Event()
    living: list[Any] = []

    def pipeline_and_wait() -> None:
        client.pipeline(transaction=False).ping().execute()
        living.append(client.pinned_connection())
        go_on.wait(10)

    thread = threading.Thread(target=pipeline_and_wait)
    thread.start()
    while not living:
        time.sleep(0.01)
    client.close()  # from another thread than the one that made it
    assert living[0]._sock is None
    go_on.set()
    thread.join()


def test_a_push_frame_before_a_reply_goes_to_the_parser_and_the_reply_is_read(
    clients: tuple[redis.Redis, redis.Redis], key_prefix: str, pinned_reads: list[int]
) -> None:
    """RESP3 lets the server push frames (invalidations, maintenance notices) ahead of
    a reply: the parser's handlers take them and the pipeline reads on."""
    lean, stock = clients
    key = f"{key_prefix}:tracked"
    stock.set(key, "before")
    pipe = lean.pipeline(transaction=False)
    pipe.execute_command("CLIENT", "TRACKING", "ON")
    pipe.get(key)
    assert pipe.execute() == ["OK", "before"]
    stock.set(key, "after")  # the server pushes an invalidation on lean's connection
    time.sleep(0.1)
    pipe = lean.pipeline(transaction=False)
    pipe.get(key)
    pipe.set(f"{key_prefix}:next", "x")
    assert pipe.execute() == ["after", True]
    assert pinned_reads == [2, 2]


def test_a_read_timeout_is_redis_pys_and_drops_the_connection(
    redis_node_url: str, key_prefix: str, pinned_reads: list[int]
) -> None:
    client = PinnedRedis.from_url(redis_node_url, socket_timeout=0.2, decode_responses=True)
    try:
        connection = client.pinned_connection()
        pipe = client.pipeline(transaction=False)
        pipe.set(f"{key_prefix}:k", "v")
        pipe.blpop([f"{key_prefix}:empty"], timeout=2)  # answers after the read timeout
        with pytest.raises(redis.TimeoutError, match="Timeout reading from"):
            pipe.execute()
        assert connection._sock is None  # the late reply is never read as the next one's
        assert client.pipeline(transaction=False).get(f"{key_prefix}:k").execute() == ["v"]
        assert pinned_reads == [2, 1]
    finally:
        client.close()
