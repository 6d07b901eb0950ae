"""The Lua scripts of `worker/store/lua/`, registered once per Redis client.

Hot pipelines queue scripts by SHA alone (`Scripts.queue`): redis-py's own way
(`script(..., client=pipe)`) asks Redis whether the scripts exist before every such
pipeline, one more round trip each time. Instead the scripts are loaded when a runtime
opens (`load`); a Redis that lost them (restarted, flushed) answers NoScriptError,
which the task wrapper retries after loading them again (`_run` in service/tasks.py),
as an inline delivery does (`Runtime.deliver_queued`) and a settling, whose sends went
out already, does itself (`Settler`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from importlib import resources
from typing import Any, Protocol

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from worker.store.client import StatePipeline, StateRedis


def _source(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text()


class _BySha(Protocol):
    @property
    def sha(self) -> str: ...


@dataclass(frozen=True)
class LuaSource:
    """A script whose SHA is known without a client (Redis names a script by the SHA-1
    of its text): for readers that queue it where no `Scripts` is at hand."""

    script: str

    @cached_property
    def sha(self) -> str:
        return hashlib.sha1(self.script.encode()).hexdigest()


READ_SHOPPER = LuaSource(_source("read_shopper"))
"""The reads of one shopper in one call (shoppers/snapshot.py)."""
SEGMENT_PUT = LuaSource(_source("segment_put"))
"""The writes of one shopper's segment index entries in one call (segment_index.py)."""
_STANDALONE = (READ_SHOPPER, SEGMENT_PUT)


def execute_loading(client: StateRedis, fill: Callable[[StatePipeline], None]) -> list[Any]:
    """Run a pipeline that `fill` queues; if Redis lost the scripts it calls (restarted,
    flushed), load them and run it once more. Only for pipelines safe to run twice, off
    the task path (tasks retry through their wrapper)."""
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        fill(pipe)
        try:
            return pipe.execute()
        except NoScriptError:
            if attempt:
                raise
            for source in _STANDALONE:
                client.script_load(source.script)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Scripts:
    apply_event: Script
    upsert_item: Script
    live_mark: Script
    set_preferences: Script
    delayed_claim: Script
    delayed_ack: Script
    contact_reserve: Script
    deactivate_device: Script
    claim_device: Script
    unlist_device: Script
    release_device: Script
    drop_moved_device: Script
    run_tally: Script
    coupon_issue: Script
    coupon_redeem: Script
    coupon_expire: Script

    @classmethod
    def register(cls, client: StateRedis) -> Scripts:
        return cls(
            apply_event=client.register_script(_source("apply_event")),
            upsert_item=client.register_script(_source("upsert_item")),
            live_mark=client.register_script(_source("live_mark")),
            set_preferences=client.register_script(_source("set_preferences")),
            delayed_claim=client.register_script(_source("delayed_claim")),
            delayed_ack=client.register_script(_source("delayed_ack")),
            contact_reserve=client.register_script(_source("contact_reserve")),
            deactivate_device=client.register_script(_source("deactivate_device")),
            claim_device=client.register_script(_source("claim_device")),
            unlist_device=client.register_script(_source("unlist_device")),
            release_device=client.register_script(_source("release_device")),
            drop_moved_device=client.register_script(_source("drop_moved_device")),
            run_tally=client.register_script(_source("run_tally")),
            coupon_issue=client.register_script(_source("coupon_issue")),
            coupon_redeem=client.register_script(_source("coupon_redeem")),
            coupon_expire=client.register_script(_source("coupon_expire")),
        )

    def load(self, client: StateRedis) -> None:
        """Load every script into Redis (one round trip): at start, and after a restart
        lost them."""
        sources = [getattr(self, f.name).script for f in fields(self)]
        sources += [source.script for source in _STANDALONE]
        if isinstance(client, RedisCluster):  # a cluster pipeline refuses SCRIPT LOAD
            for source in sources:
                client.script_load(source)  # to every master
            return
        pipe = client.pipeline(transaction=False)
        for source in sources:
            pipe.script_load(source)
        pipe.execute()

    @staticmethod
    def queue(
        pipe: StatePipeline,
        script: _BySha,
        keys: Sequence[str],
        args: Sequence[str | int | float],
    ) -> None:
        """Queue `script` in `pipe` by SHA, without the existence check (module doc).
        Only in pipelines that are safe to run again whole after a NoScriptError.
        (`execute_command`: redis-py's cluster pipeline refuses its `evalsha` method but
        routes the command by its keys.)"""
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]

    @staticmethod
    def call_in(
        pipe: StatePipeline,
        script: Script,
        keys: Sequence[str],
        args: Sequence[str | int | float],
    ) -> None:
        """Queue `script` in `pipe`; a single node's pipeline loads it first if Redis lost
        it (one more round trip). A cluster pipeline cannot: there a NoScriptError
        reaches the caller, whose task loads the scripts and runs again (a settling
        loads them and runs again what met them: `Settler`)."""
        if isinstance(pipe, redis.client.Pipeline):
            script(keys=keys, args=args, client=pipe)
        else:
            Scripts.queue(pipe, script, keys, args)
