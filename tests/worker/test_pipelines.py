"""The state store's pipelines read back and cut short, on a single node and on a cluster,
whose pipeline keeps its commands elsewhere (`queued`, `unqueue_after`): what
`FiringWrites` and the settling rely on."""

from __future__ import annotations

import pytest

from worker.delivery.requests import FiringWrites
from worker.service.runtime import Runtime
from worker.store.client import StatePipeline, queued, unqueue_after

pytestmark = pytest.mark.redis_kinds


def test_a_pipelines_commands_are_read_back_and_the_last_ones_dropped(
    runtime: Runtime, key_prefix: str
) -> None:
    keys = [f"{key_prefix}:{{pipes}}:{name}" for name in "abc"]
    pipe = runtime.redis.pipeline(transaction=False)
    for n, key in enumerate(keys):
        pipe.set(key, n)
    assert [args for args, _ in queued(pipe)] == [("SET", key, n) for n, key in enumerate(keys)]
    unqueue_after(pipe, 1)
    assert len(pipe) == 1
    assert pipe.execute() == [True]
    assert [runtime.redis.get(key) for key in keys] == ["0", None, None]


def test_firing_writes_land_alone_when_what_follows_them_cannot_be_queued(
    runtime: Runtime, key_prefix: str
) -> None:
    mine, theirs = f"{key_prefix}:{{fw}}:writes", f"{key_prefix}:{{fw}}:claims"
    pipe = runtime.redis.pipeline(transaction=False)
    pipe.set(mine, "landed")
    writes = FiringWrites(pipe)

    def claims_then_a_bug(after_writes: StatePipeline) -> None:
        after_writes.set(theirs, "queued")
        raise RuntimeError("a bad rule")

    with pytest.raises(RuntimeError):
        writes.run_with(claims_then_a_bug)
    writes.land()
    assert runtime.redis.get(mine) == "landed"
    assert runtime.redis.get(theirs) is None
