"""How the state store's connections turn a command into bytes for the wire.

redis-py's packer with hiredis (`HiredisRespSerializer`, redis-py 8) runs its `Encoder`
over every argument in Python before handing the tuple to hiredis's C `pack_command`,
which takes str (as UTF-8), int, float and bytes itself and writes the same bytes. At
~50 commands and ~300 arguments an event that Python loop was 15 % of a `track_batch`'s
CPU (py-spy of bench/hot_path.py); an 11-argument EVALSHA packs in 2.8 us here against
24 us.

A command hiredis refuses (a bool or None argument, a bytearray, a subclass of int such
as an IntEnum), and one whose name is not a single word ("SCRIPT LOAD"), goes to
redis-py's pure-Python packer: the bytes redis-py 8 writes, or its `DataError`. Strings
are always UTF-8 (strict), whatever a connection's `encoding`. Two inputs the callers
never pass are not redis-py's: a memoryview (hiredis copies it, and would send a strided
one's whole buffer) and an int of more than 4,300 digits, whose failing `repr` crashes
hiredis 3.5 where redis-py raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hiredis
import redis

# Private in redis-py, and what its own connections pack with when hiredis is absent.
from redis._parsers import Encoder
from redis.connection import PythonRespSerializer

__all__ = ["NAMES_KEPT_MAX", "PACKER", "PackedConnection"]

# redis-py's default: larger arguments go out as their own buffers
_BUFFER_CUTOFF = 6000


class _CommandPacker:
    """A `command_packer` for redis-py connections; stateless, so one serves them all."""

    def __init__(self) -> None:
        encoder = Encoder(encoding="utf-8", encoding_errors="strict", decode_responses=False)  # type: ignore[no-untyped-call]
        fallback = PythonRespSerializer(_BUFFER_CUTOFF, encoder.encode)
        self._fallback: Callable[..., list[bytes | memoryview]] = fallback.pack

    def pack(self, *args: Any) -> list[bytes | memoryview]:
        name = args[0]
        if name in _ONE_WORD or (isinstance(name, str) and _is_one_word(name)):
            try:
                return [hiredis.pack_command(args)]
            except TypeError:
                pass
        return self._fallback(*args)


NAMES_KEPT_MAX = 1024
"""Command names remembered by a check at most: they come from code, but bound them all
the same."""

_ONE_WORD: set[str] = set()  # names met that are one word: a set lookup, not a split


def _is_one_word(name: str) -> bool:
    if name.split() != [name]:
        return False
    if len(_ONE_WORD) < NAMES_KEPT_MAX:
        _ONE_WORD.add(name)
    return True


PACKER = _CommandPacker()


class PackedConnection(redis.Connection):
    """A TCP connection with `PACKER`: what a cluster client gives its nodes, since
    `RedisCluster` passes them `connection_class` but not `command_packer`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(command_packer=PACKER, **kwargs)  # type: ignore[no-untyped-call]
