"""How the state store's connections turn a command into bytes for the wire.

redis-py's packer with hiredis (`HiredisRespSerializer`) runs its `Encoder` over every
argument in Python before handing the tuple to hiredis's C `pack_command`, which takes
str (as UTF-8), int, float and bytes itself and writes the same bytes. At ~50 commands
and ~300 arguments an event that Python loop was 15 % of a `track_batch`'s CPU (py-spy
of bench/hot_path.py); an 11-argument EVALSHA packs in 2.8 us here against 24 us.

What hiredis refuses (a bool or None argument, a bytearray, a command name of two words
such as "SCRIPT LOAD") goes to redis-py's pure-Python packer, which packs it as redis-py
would or raises redis-py's `DataError`.
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis
from redis._parsers import Encoder
from redis.connection import PythonRespSerializer

# redis-py's default: larger arguments go out as their own buffers
_BUFFER_CUTOFF = 6000


class CommandPacker:
    """A `command_packer` for redis-py connections; stateless, so one serves them all."""

    def __init__(self) -> None:
        encoder = Encoder(encoding="utf-8", encoding_errors="strict", decode_responses=False)  # type: ignore[no-untyped-call]
        self._fallback = PythonRespSerializer(_BUFFER_CUTOFF, encoder.encode).pack

    def pack(self, *args: Any) -> list[bytes]:
        name = args[0]
        if isinstance(name, str) and " " not in name:
            try:
                return [hiredis.pack_command(args)]
            except TypeError:
                pass
        return self._fallback(*args)  # type: ignore[no-any-return, no-untyped-call]


PACKER = CommandPacker()


class PackedConnection(redis.Connection):
    """A TCP connection with `PACKER`: what a cluster client gives its nodes, since
    `RedisCluster` passes them `connection_class` but not `command_packer`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(command_packer=PACKER, **kwargs)  # type: ignore[no-untyped-call]
