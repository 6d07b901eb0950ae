"""A single node's client whose plain pipelines run on a connection pinned to the thread.

redis-py's `Pipeline.execute` borrows a connection from the pool for every pipeline,
and the pool checks each one it hands out for data left on it or a server that closed
it: a zero-timeout read, three system calls and an exception. A single event makes 12
pipelines back to back, so those checks were about a tenth of its CPU:
`bench/hot_path.py` in one process, alternating the two (6 pairs): a single event sent
inline 0.88 of the CPU, 0.99 with the check made before every pipeline.

A plain pipeline (no transaction, no WATCH, no `Script` objects to load first) runs here
instead: on the calling thread's own connection of this client, made by the pool's
factory (same address, credentials, timeouts, packer) and kept while the thread lives (a
forked child makes its own). Nothing can be left on it (a pipeline that stops reading
for any reason drops it), so only a server that closed it is to be feared, and that
mostly after a pause: the check is made when the connection has been idle
`IDLE_CHECK_S` or more, as the pool makes it (a closed one is connected again). A
connection that died within the last `IDLE_CHECK_S` fails its next pipeline with
redis-py's `ConnectionError`, which the task retries (as it retries the pipeline that
was in flight when it died), and the one after reconnects.

It is sent and read with redis-py's `Connection` methods, so errors are redis-py's and
its 30 s health check still pings a long-idle connection. Each reply goes through the
command's response callback; a `ResponseError` reply stays in its place and the first
is raised after all are read, as redis-py does. Everything else (commands,
transactions, pipelines with scripts to load, HIMPORT) is redis-py's own.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import EMPTY_RESPONSE, NEVER_DECODE
from redis.exceptions import ResponseError

__all__ = ["IDLE_CHECK_S", "PinnedPipeline", "PinnedRedis"]

IDLE_CHECK_S = 1.0
"""A pinned connection idle this long is checked before use, as the pool checks its own."""

# options that steer the read, not the callback (redis-py's `parse_response` pops them)
_READ_OPTIONS = frozenset({"keys", EMPTY_RESPONSE, NEVER_DECODE})


@dataclass(slots=True)
class _Pinned:
    connection: Any  # a redis-py `Connection` (untyped)
    used_at: float = float("-inf")


class PinnedRedis(redis.Redis):
    """`redis.Redis` whose `pipeline()` is a `PinnedPipeline`; `close()` closes the
    threads' pinned connections too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pinned: dict[int, _Pinned] = {}
        self._pinned_pid = os.getpid()
        self._pinned_lock = threading.Lock()

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> PinnedPipeline:
        return PinnedPipeline(self, transaction, shard_hint)

    def pinned_connection(self) -> Any:
        """The calling thread's connection, connected, and checked as the pool checks its
        own when idle `IDLE_CHECK_S` or more."""
        thread = threading.get_ident()
        if self._pinned_pid != os.getpid():  # forked: the parent's sockets are not ours
            with self._pinned_lock:
                self._pinned, self._pinned_pid = {}, os.getpid()
        pinned = self._pinned.get(thread)
        if pinned is None:
            pinned = _Pinned(self.connection_pool.make_connection())
            with self._pinned_lock:
                self._pinned[thread] = pinned
        now = time.monotonic()
        if pinned.connection._sock is None:
            pinned.connection.connect()
        elif now - pinned.used_at >= IDLE_CHECK_S:
            self.connection_pool.ensure_connection(pinned.connection)
        pinned.used_at = now
        return pinned.connection

    def close(self) -> None:
        with self._pinned_lock:
            pinned, self._pinned = list(self._pinned.values()), {}
        for p in pinned:
            p.connection.disconnect()
        super().close()


class PinnedPipeline(redis.client.Pipeline):
    def __init__(self, client: PinnedRedis, transaction: bool, shard_hint: Any) -> None:
        super().__init__(client.connection_pool, client.response_callbacks, transaction, shard_hint)
        self._client = client
        self._in_transaction = transaction

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        commands = self.command_stack
        plain = not (self._in_transaction or self.explicit_transaction or self.watching)
        if not commands or not plain or self.scripts or self.connection is not None:
            return super().execute(raise_on_error)
        if any(args[0] == "HIMPORT" for args, _ in commands):
            return super().execute(raise_on_error)
        connection = self._client.pinned_connection()
        if connection._resp2_fallback:  # RESP3 refused: redis-py picks other callbacks
            return super().execute(raise_on_error)
        try:
            replies = self._send_and_read(connection, commands)
        finally:
            self.reset()
        if raise_on_error:
            self.raise_first_error(commands, replies)  # type: ignore[no-untyped-call]
        return replies

    def _send_and_read(
        self, connection: Any, commands: list[tuple[tuple[Any, ...], dict[str, Any]]]
    ) -> list[Any]:
        connection.send_packed_command(connection.pack_commands([args for args, _ in commands]))
        read = connection.read_response
        callbacks: Any = self.response_callbacks
        replies: list[Any] = []
        try:
            for args, options in commands:
                try:
                    reply = read(disable_decoding=True) if NEVER_DECODE in options else read()
                except ResponseError as exc:
                    replies.append(options.get(EMPTY_RESPONSE, exc))
                    continue
                callback = callbacks.get(args[0])
                if callback is not None:
                    if options:
                        options = {k: v for k, v in options.items() if k not in _READ_OPTIONS}
                    reply = callback(reply, **options)
                replies.append(reply)
        except BaseException:
            connection.disconnect()  # the replies not read would answer the next pipeline
            raise
        return replies
