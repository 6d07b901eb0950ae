"""Redis errors sorted by what a task must do about them.

    redis.RedisError
    ├── transient: Redis can't serve us *now*; retry with backoff, then requeue the message
    │   ├── ConnectionError, TimeoutError          the server or the network is away
    │   ├── BusyLoadingError (LOADING)             restarted, still reading its data
    │   ├── NoScriptError (NOSCRIPT)               restarted without our scripts: reload
    │   ├── ReadOnlyError (READONLY)               we talk to a replica (after a failover)
    │   ├── MasterDownError (MASTERDOWN)           a replica that lost its master
    │   ├── OutOfMemoryError (OOM)                 maxmemory reached; an operator frees it
    │   ├── TryAgainError (TRYAGAIN)               cluster resharding a multi-key command
    │   └── ClusterDownError (CLUSTERDOWN)         cluster without a quorum of masters
    └── anything else: a bug in our commands (WRONGTYPE, syntax, a failing script)

None of the transient ones says the input is bad: dropping the message on any of them
would lose an event that a healthy Redis would have applied. A script whose command met
one of them reports it inside a script error on Redis 6.2 (`Error running script …
-READONLY …`), so the error text is read as well as the class.
"""

from __future__ import annotations

import re
import traceback

import redis
from redis import exceptions as rex

from worker.store.redaction import without_quoted

__all__ = ["TRANSIENT", "describe", "is_transient", "stack"]

TRANSIENT: tuple[type[redis.RedisError], ...] = (
    rex.ConnectionError,
    rex.TimeoutError,
    rex.BusyLoadingError,
    rex.NoScriptError,
    rex.ReadOnlyError,
    rex.MasterDownError,
    rex.OutOfMemoryError,
    rex.TryAgainError,
    rex.ClusterDownError,
)
_TRANSIENT_CODES = ("READONLY", "MASTERDOWN", "OOM", "TRYAGAIN", "CLUSTERDOWN", "LOADING")


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is a Redis failure that a later attempt may not meet (see above)."""
    if isinstance(exc, TRANSIENT):
        return True
    if not isinstance(exc, rex.ResponseError):
        return False
    words = {word.lstrip("-") for word in str(exc).replace(":", " ").split()}
    return any(code in words for code in _TRANSIENT_CODES)


# redis-py repeats a failed pipeline command with its arguments: key names (raw user ids)
# and values (tokens).
_PIPELINE_COMMAND = re.compile(r"^Command # \d+ \(.*?\) of pipeline caused error: ", re.DOTALL)


def describe(exc: BaseException) -> str:
    """`exc` as a line safe to log and keep: its class and message, without the command
    redis-py repeats and without quoted values (an id or a token the message names)."""
    message = _PIPELINE_COMMAND.sub("", str(exc))
    return f"{type(exc).__name__}: {without_quoted(message)[:500]}"


def stack(exc: BaseException) -> str:
    """Where `exc` was raised (file, line, code), without its message: see `describe`."""
    return "".join(traceback.format_tb(exc.__traceback__))
