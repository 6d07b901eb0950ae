"""A single node's client whose plain pipelines run on a connection pinned to the thread.

redis-py's `Pipeline.execute` borrows a connection from the pool for every pipeline,
and the pool checks each one it hands out for data left on it or a server that closed
it: a zero-timeout read, three system calls and an exception. A single event runs 12
pipelines back to back, so those checks were about a tenth of its CPU (docs/realtime.md,
"What one event costs", has the figures).

A plain pipeline (no transaction, no WATCH, no `Script` objects to load first, no
HIMPORT) runs here instead: on the calling thread's own connection of this client, made
by the pool's factory (same address, credentials, timeouts, packer) and closed when the
thread ends or the client closes; a forked child makes its own. Nothing can be left on
it (a pipeline that stops reading for any reason drops it), so only a server that
closed it is to be feared, and that mostly after a pause: it is checked as the pool
checks its own when idle `IDLE_CHECK_S` or more (a closed one is connected again). A
connection that died within the last `IDLE_CHECK_S` fails its next pipeline with
redis-py's `ConnectionError`, which the task retries (as it retries the pipeline that
was in flight when it died), and the one after reconnects.

It is packed by the connection's packer into one buffer and sent by redis-py's
`Connection` (whose health check still pings a long-idle connection); the replies are
read from the connection's hiredis reader and socket directly (`_read_hiredis`), with
redis-py's errors. Each reply goes through the command's response callback;
a `ResponseError` reply stays in its place and the first is raised after all are read,
as redis-py does (a callback that raises drops the connection and raises, where
redis-py would keep a `ResponseError` it raised in place).
RESP3 push frames are handled by those reads as on redis-py's own pipelines, and a
connection that the server's maintenance notices mark for reconnection is reconnected
before its next pipeline (the pool does it when one comes back). What these skip of the
pool's work: its operation metrics, debug logs and client-side caching (not enabled
here; a caching connection packs differently), retries (the state store's client makes
none: `client.py`) and `max_connections` (one per thread that pipelines). A connection
that fell back from RESP3 to RESP2, whose callbacks redis-py picks otherwise, runs
redis-py's own pipeline, as does everything else (commands, transactions, pipelines
with scripts to load).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _HiredisParser
from redis._parsers.socket import SERVER_CLOSED_CONNECTION_ERROR
from redis.client import EMPTY_RESPONSE, NEVER_DECODE
from redis.exceptions import ConnectionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import is_os_level_timeout

from worker.store.command_packer import NAMES_KEPT_MAX

__all__ = ["IDLE_CHECK_S", "PinnedPipeline", "PinnedRedis"]

IDLE_CHECK_S = 1.0
"""A pinned connection idle this long is checked before use, as the pool checks its own."""

# options redis-py's `parse_response` pops before calling a callback ("keys" is for its
# client-side cache)
_NOT_FOR_CALLBACKS = frozenset({"keys", EMPTY_RESPONSE, NEVER_DECODE})
_SCALARS = frozenset({int, bytes, str, type(None)})  # replies that are neither errors nor pushes


@dataclass(slots=True, weakref_slot=True, eq=False)  # hashed by identity, in a WeakSet
class _Pinned:
    connection: Any  # a redis-py `Connection` (untyped)
    used_at: float = float("-inf")


class PinnedRedis(redis.Redis):
    """`redis.Redis` whose `pipeline()` is a `PinnedPipeline`; `close()` closes the
    threads' pinned connections too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._forget_pinned()
        _clients.add(self)

    def _forget_pinned(self) -> None:
        """No pinned connections: at start, and in a forked child (whose copies of the
        parent's are left alone: redis-py closes only its own process's sockets)."""
        self._local = threading.local()  # the thread's `_Pinned`; gone when it ends
        self._pinned: weakref.WeakSet[_Pinned] = weakref.WeakSet()  # for `close()`
        self._pinned_lock = threading.Lock()

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> PinnedPipeline:
        return PinnedPipeline(self, transaction, shard_hint)

    def pinned_connection(self) -> Any:
        """The calling thread's connection, connected, and checked as the pool checks its
        own when idle `IDLE_CHECK_S` or more."""
        pinned: _Pinned | None = getattr(self._local, "pinned", None)
        if pinned is None:
            pinned = self._local.pinned = _Pinned(self.connection_pool.make_connection())
            with self._pinned_lock:
                self._pinned.add(pinned)
        now = time.monotonic()
        if pinned.connection.should_reconnect():
            pinned.connection.disconnect()
        if pinned.connection._sock is None:
            pinned.connection.connect()
        elif now - pinned.used_at >= IDLE_CHECK_S:
            self.connection_pool.ensure_connection(pinned.connection)
        pinned.used_at = now
        return pinned.connection

    def close(self) -> None:
        with self._pinned_lock:
            pinned = list(self._pinned)
        for p in pinned:
            p.connection.disconnect()
        super().close()


_clients: weakref.WeakSet[PinnedRedis] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_clients):
        client._forget_pinned()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _is_himport(name: Any) -> bool:
    """HIMPORT's subcommands are queued as one name ("HIMPORT SET"), in any case."""
    text = name if isinstance(name, str) else str(name, "utf-8", "replace")
    if text[:7].upper() == "HIMPORT":
        return True
    if len(_NOT_HIMPORT) < NAMES_KEPT_MAX:
        _NOT_HIMPORT.add(name)
    return False


_NOT_HIMPORT: set[Any] = set()  # command names met that are not HIMPORT's


class PinnedPipeline(redis.client.Pipeline):
    """A pipeline of `PinnedRedis`: a plain one runs on the thread's pinned connection."""

    def __init__(self, client: PinnedRedis, transaction: bool, shard_hint: Any) -> None:
        super().__init__(client.connection_pool, client.response_callbacks, transaction, shard_hint)
        self._client = client
        # `Pipeline.transaction` is an attribute at run time, but mypy sees
        # `Redis.transaction`, the method it shadows
        self._in_transaction = transaction

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        commands = self.command_stack
        plain = not (self._in_transaction or self.explicit_transaction or self.watching)
        if not commands or not plain or self.scripts or self.connection is not None:
            return super().execute(raise_on_error)
        names = {args[0] for args, _ in commands}
        if not names <= _NOT_HIMPORT and any(_is_himport(name) for name in names):
            return super().execute(raise_on_error)
        connection = self._client.pinned_connection()
        if connection._resp2_fallback:
            return super().execute(raise_on_error)
        try:
            replies, first_error = self._send_and_read(connection, commands)
        finally:
            self.reset()
        if raise_on_error and first_error >= 0:  # as `raise_first_error` does
            error = replies[first_error]
            self.annotate_exception(error, first_error + 1, commands[first_error][0])  # type: ignore[no-untyped-call]
            raise error
        return replies

    def _send_and_read(
        self, connection: Any, commands: list[tuple[tuple[Any, ...], dict[str, Any]]]
    ) -> tuple[list[Any], int]:
        """The replies, and the position of the first that is an error (-1: none)."""
        callbacks: Any = self.response_callbacks
        replies: list[Any] = []
        first_error = -1
        try:
            # one buffer, packed by the connection's packer: `pack_commands` would also
            # split it at 6 kB, ~0.25 us a command in Python that the socket does not need
            pack = connection._command_packer.pack
            connection.send_packed_command([b"".join([c for a, _ in commands for c in pack(*a)])])
            read = _reader_of(connection)
            for args, options in commands:
                reply = read(connection, NEVER_DECODE in options)
                if isinstance(reply, ResponseError):
                    reply = options.get(EMPTY_RESPONSE, reply)
                    if first_error < 0 and isinstance(reply, ResponseError):
                        first_error = len(replies)
                    replies.append(reply)
                    continue
                callback = _callback(callbacks, args[0])
                if callback is not None:
                    if not options or options.keys() <= _NOT_FOR_CALLBACKS:
                        reply = callback(reply)
                    else:
                        options = {k: v for k, v in options.items() if k not in _NOT_FOR_CALLBACKS}
                        reply = callback(reply, **options)
                replies.append(reply)
        except BaseException:
            connection.disconnect()  # the replies not read would answer the next pipeline
            raise
        if connection.health_check_interval:
            connection.next_health_check = time.monotonic() + connection.health_check_interval
        return replies, first_error


def _callback(callbacks: Any, name: Any) -> Any:
    """`callbacks.get(name)` (a redis-py `CaseInsensitiveDict`, keyed upper case) without
    its `upper()` call when `name` is upper case already, as every redis-py command's is:
    found as it is, or (most commands: EVALSHA, HINCRBY, ...) not there at all."""
    callback = dict.get(callbacks, name, _NO_CALLBACK)
    if callback is not _NO_CALLBACK:
        return callback
    return None if type(name) is str and name.isupper() else callbacks.get(name)


_NO_CALLBACK = object()


def _reader_of(connection: Any) -> Callable[[Any, bool], Any]:
    """How to read the next reply on `connection` (undecoded when asked) as its
    `read_response` would, but returning a `ResponseError` reply instead of raising it:
    straight from hiredis's reader and the socket when the connection parses with
    redis-py's hiredis parser (`_read_hiredis`; its `read_response` and the connection's
    cost ~1.5 us a reply in Python), through `read_response` otherwise."""
    return _read_hiredis if type(connection._parser) is _HiredisParser else _read_response


def _read_hiredis(connection: Any, undecoded: bool) -> Any:
    """The next reply from the connection's hiredis reader and socket. Errors are
    redis-py's: a read timeout is its `TimeoutError`, a socket error or a closed
    connection its `ConnectionError`, and a push frame goes to the parser's handlers."""
    parser: Any = connection._parser  # typed by the stubs narrower than it is
    reader, sock = parser._reader, connection._sock
    if reader is None or sock is None:
        raise ConnectionError(SERVER_CLOSED_CONNECTION_ERROR)
    reply = reader.gets(False) if undecoded else reader.gets()
    while reply is NOT_ENOUGH_DATA:
        try:
            got = sock.recv_into(parser._buffer)
        except TimeoutError as exc:
            if is_os_level_timeout(exc):  # ETIMEDOUT from the OS: the connection is dead
                raise ConnectionError(f"Error while reading from socket: {exc.args}") from exc
            raise RedisTimeoutError(f"Timeout reading from {connection._host_error()}") from exc
        except OSError as exc:
            raise ConnectionError(
                f"Error while reading from {connection._host_error()} : {exc.args}"
            ) from exc
        if not got:
            raise ConnectionError(SERVER_CLOSED_CONNECTION_ERROR)
        reader.feed(parser._buffer, 0, got)
        reply = reader.gets(False) if undecoded else reader.gets()
    if type(reply) in _SCALARS:  # most replies: nothing more to look at
        return reply
    push_type = parser._hiredis_PushNotificationType
    if push_type is not None and isinstance(reply, push_type):
        parser.handle_push_response(reply)
        return _read_response(connection, undecoded)  # the reply it came before
    if isinstance(reply, ConnectionError):  # e.g. LOADING: raised, as the parser does
        raise reply
    if isinstance(reply, list) and reply and isinstance(reply[0], ConnectionError):
        raise reply[0]
    return reply


def _read_response(connection: Any, undecoded: bool) -> Any:
    try:
        return (
            connection.read_response(disable_decoding=True)
            if undecoded
            else connection.read_response()
        )
    except ResponseError as exc:
        return exc
