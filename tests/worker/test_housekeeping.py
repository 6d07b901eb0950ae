"""The leader's housekeeping: index versions pruned but never one a worker may load or
serve, streams trimmed to their count and age, the ledgers of retired rules and
campaigns given an expiry (and a reconfigured one's taken off)."""

from __future__ import annotations

import json
from pathlib import Path

from indexing import LocalStore, ModelParams, read_events, save_model, train_model
from indexing.store import CURRENT_FILE, MANIFEST_FILE, list_versions
from tests.clock import RUN_NOW
from tests.indexing.conftest import planted_rows
from worker.firing.index_holder import IndexHolder
from worker.firing.index_store import open_index_store
from worker.service.housekeeping import (
    expire_retired,
    prune_index,
    run_housekeeping,
    stream_bounds,
    trim_streams,
)
from worker.service.runtime import Runtime
from worker.settings import Settings

DAY = 86_400.0
GRACE = 3600.0


def fake_versions(root: Path, count: int) -> list[str]:
    """Version folders the store lists (a manifest each), oldest first."""
    names = [f"20300101T0000{n:02d}000000Z" for n in range(count)]
    for name in names:
        (root / name).mkdir(parents=True)
        (root / name / MANIFEST_FILE).write_text("{}")
    return names


def test_pruning_spares_current_pointer_and_recently_served_versions(
    runtime: Runtime, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    v = fake_versions(store.root, 8)
    (store.root / CURRENT_FILE).write_text(v[7])
    rt, k = runtime, runtime.keys
    rt.redis.set(k.index_version, v[2])  # the pointer lags the store (a CLI publish)
    rt.redis.zadd(k.index_serving, {v[1]: RUN_NOW - GRACE + 60, v[0]: RUN_NOW - GRACE - 60})

    pruned = prune_index(store, rt.redis, k, keep=2, grace_s=GRACE, now=RUN_NOW)

    assert pruned == [v[0], v[3], v[4], v[5]]
    assert list_versions(store.root) == [v[1], v[2], v[6], v[7]]
    assert rt.redis.zrange(k.index_serving, 0, -1) == [v[1]]  # the stale note went


def test_a_worker_notes_the_version_it_serves_at_each_check(
    settings: Settings, runtime: Runtime
) -> None:
    store = open_index_store(settings)
    log, _ = read_events(planted_rows(0))
    version, _ = save_model(store.staging, train_model(log, ModelParams()))
    store.publish(version, force=True)
    holder = IndexHolder(store, runtime.redis, runtime.keys)
    holder.load_now()
    assert runtime.redis.zcard(runtime.keys.index_serving) == 0  # nothing served yet

    holder.between_tasks(now=1e12)  # past the check interval

    assert runtime.redis.zrange(runtime.keys.index_serving, 0, -1) == [version]
    assert prune_index(store, runtime.redis, runtime.keys, 1, GRACE, RUN_NOW) == []


def test_streams_are_trimmed_to_their_count_and_their_age(runtime: Runtime) -> None:
    rt = runtime
    settings = rt.settings.model_copy(
        update={
            "interaction_log_maxlen": 1000,
            "rejected_log_maxlen": 100,
            "interaction_log_max_age_days": 10,
            "rejected_log_max_age_days": 2,
            "dead_letters_max_age_days": None,
        }
    )
    logs = stream_bounds(rt.keys, settings)
    interactions, rejected, dead = (b.key for b in logs)

    def add(key: str, count: int, first: float) -> None:
        pipe = rt.redis.pipeline(transaction=False)
        for n in range(count):  # ids as XADD * would stamp them `first + n` s after epoch
            pipe.xadd(key, {"n": str(n)}, id=f"{int((first + n) * 1000)}-0")
        pipe.execute()

    add(interactions, 1500, RUN_NOW - 11 * DAY)  # over the count, 500 of them too old
    add(interactions, 300, RUN_NOW - DAY)
    add(rejected, 80, RUN_NOW - 3 * DAY)  # under the count, all too old
    add(rejected, 10, RUN_NOW - DAY)
    add(dead, 500, RUN_NOW - 300 * DAY)  # no age bound; the default count of 100,000

    removed = trim_streams(rt.redis, logs, RUN_NOW)

    assert (rt.redis.xlen(interactions), rt.redis.xlen(rejected), rt.redis.xlen(dead)) == (
        300,
        10,
        500,
    )
    assert removed == 1500 + 80


def test_retired_rules_and_campaigns_expire_and_come_back_when_configured(
    runtime: Runtime,
) -> None:
    rt, k = runtime, runtime.keys
    for rule in ("cart_abandon", "old_rule", "winback"):
        rt.audit.count(rule, "delivered", 3)
    for name in ("winback", "spring_sale"):
        rt.redis.hset(k.campaign(name).run, "state", "done")
        rt.redis.lpush(k.campaign(name).history, "{}")
    rules, campaigns = {"cart_abandon", "winback"}, {"winback"}

    assert expire_retired(rt.redis, k, rules, campaigns, int(90 * DAY)) == (3, 0)
    assert expire_retired(rt.redis, k, rules, campaigns, int(90 * DAY)) == (0, 0)  # once

    def has_ttl(key: str) -> bool:
        return int(rt.redis.ttl(key)) > 0

    assert has_ttl(k.rule_stats("old_rule"))
    assert has_ttl(k.campaign("spring_sale").run) and has_ttl(k.campaign("spring_sale").history)
    assert not has_ttl(k.rule_stats("cart_abandon")) and not has_ttl(k.rule_stats("winback"))
    assert not has_ttl(k.campaign("winback").run)
    assert rt.audit.stats(["old_rule"])["old_rule"]["delivered"] == 3  # kept meanwhile

    assert expire_retired(rt.redis, k, rules | {"old_rule"}, campaigns, int(90 * DAY)) == (0, 1)
    assert not has_ttl(k.rule_stats("old_rule"))


def test_a_housekeeping_run_is_counted_and_recorded(runtime: Runtime, tmp_path: Path) -> None:
    rt = runtime
    store = LocalStore(tmp_path / "store")
    v = fake_versions(store.root, 7)
    (store.root / CURRENT_FILE).write_text(v[6])
    rt.redis.hset(rt.keys.campaign("gone").run, "state", "done")  # no campaign configured

    run = run_housekeeping(rt.redis, rt.keys, rt.settings, store, rt.metrics, "me", RUN_NOW)

    assert run.index_versions_pruned == v[:2]  # five kept by default
    assert run.ledgers_expiring == 1
    recorded = json.loads(rt.redis.get(rt.keys.housekeeping_last))
    assert (recorded["by"], recorded["index_versions_pruned"]) == ("me", v[:2])
    counters = rt.metrics.snapshot()
    assert counters["housekeeping.runs"] == 1
    assert counters["housekeeping.index_versions_pruned"] == 2
