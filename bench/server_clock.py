"""What the Redis server spends executing each command, and each of our Lua scripts by
name, from its SLOWLOG at a threshold of 0 (`bench/hot_path.py --slowlog`).

The SLOWLOG times a command's execution inside the server (a script's, the commands it
calls included), not the reading of requests or the writing of replies; logging every
command adds a little to each. Commands of the probe itself (INFO, SLOWLOG, CONFIG) are
left out.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import redis

__all__ = ["ServerClock"]

_LUA = Path(__file__).resolve().parent.parent / "worker" / "store" / "lua"
_PROBES = {"INFO", "SLOWLOG", "CONFIG"}
_ENTRIES_MAX = 1_000_000  # a stage's call logs at most this many: a batch of 100 ~12,000


def _script_names() -> dict[str, str]:
    """SHA-1 of each script's text -> its file name (what Redis names a script by)."""
    return {hashlib.sha1(path.read_bytes()).hexdigest(): path.name for path in _LUA.glob("*.lua")}


class ServerClock:
    """Install on a server with `enable()`; `start()` before the work, `take()` after."""

    def __init__(self, probe: redis.Redis) -> None:
        self._probe = probe
        self._scripts = _script_names()

    def enable(self) -> None:
        self._probe.config_set("slowlog-log-slower-than", 0)
        self._probe.config_set("slowlog-max-len", _ENTRIES_MAX)

    def start(self) -> None:
        self._probe.slowlog_reset()

    def take(self) -> tuple[Counter[str], Counter[str]]:
        """(microseconds, calls) by command since `start`, EVALSHA by script."""
        us: Counter[str] = Counter()
        calls: Counter[str] = Counter()
        for entry in self._probe.slowlog_get(_ENTRIES_MAX):
            name = self._name(entry["command"])
            if name is None:
                continue
            us[name] += int(entry["duration"])
            calls[name] += 1
        return us, calls

    def _name(self, command: Any) -> str | None:
        text = command.decode(errors="replace") if isinstance(command, bytes) else str(command)
        words = text.split()
        name = words[0].upper() if words else ""
        if name in _PROBES or not name:
            return None
        if name == "EVALSHA" and len(words) > 1:
            return self._scripts.get(words[1], f"script {words[1][:8]}")
        return name
