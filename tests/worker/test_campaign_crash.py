"""A campaign run survives its worker and its scheduler being killed mid-run: real worker
and scheduler processes, SIGKILL, new ones take over, and every shopper is reached
exactly once, counted at the local gateway."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from tests.worker.conftest import WorkerProcess, wait_for
from tests.worker.realtime import (
    LAPSED_CONFIG,
    Gateways,
    build_planted_index,
    campaign_settings,
    planted_catalog,
    register,
)
from worker.service import ingest
from worker.service.runtime import Runtime
from worker.settings import Settings

SHOPPERS = 60
CONFIG = (
    LAPSED_CONFIG
    + """
[[campaigns]]
name = "winback"
segment = "lapsed"
rate_per_s = 15
title = "Picked for you"
body = "{{ items[0].title }}"
"""
)


def test_killed_worker_and_scheduler_mid_run_reach_everyone_exactly_once(
    settings: Settings, gateways: Gateways, tmp_path: Path
) -> None:
    gateways.reset()
    config = tmp_path / "pushrec.toml"
    config.write_text(CONFIG)
    index_dir = tmp_path / "index"
    build_planted_index(index_dir)
    env = {**gateways.env, "PUSHREC_CONFIG": str(config), "PUSHREC_INDEX_STORE": str(index_dir),
           "PUSHREC_SCHEDULER_LEASE_S": "3"}  # fmt: skip
    # unacked tasks of the killed worker come back after the visibility timeout
    settings = settings.model_copy(update={"visibility_timeout_s": 10, "task_time_limit_s": 8})
    rt = Runtime.open(settings.model_copy(update=campaign_settings(config)))
    now = time.time()
    ingest.upsert_items(rt, planted_catalog(), now)
    tokens = {}
    for n in range(SHOPPERS):
        user = f"c{n}"
        event = {"event_id": f"e{n}", "user_id": user, "type": "purchase",
                 "item_id": f"b{n % 4}-1", "ts": now - 40 * 86_400}  # fmt: skip
        ingest.track(rt, [event], now, "pushrec.track_batch", f"d{n}")
        tokens[user] = f"fcm-token-{user}-{'x' * 20}"
        register(rt, user, "fcm", tokens[user], now)
    gateways.slow_down("fcm", 100)

    def processes(tag: str) -> list[WorkerProcess]:
        worker = WorkerProcess(settings, tmp_path / f"w-{tag}.log", f"cw{tag}", 2, env=env)
        scheduler = WorkerProcess(settings, tmp_path / f"s-{tag}.log", f"cs{tag}", 1, env=env,
                                  command=("scheduler", "--loglevel=INFO"),
                                  ready="is the leader")  # fmt: skip
        return [worker, scheduler]

    first = processes("1")
    try:
        [campaign] = rt.settings.campaigns
        run = rt.runs().start(campaign, now, time.time(), immediate=True)
        assert run["audience"] == str(SHOPPERS)
        wait_for(lambda: len(gateways.accepted("fcm")) >= 10, what="the run under way")
        worker, scheduler = first
        scheduler.kill()
        # A kill while a gateway call is in flight re-sends that call's messages after the
        # restart (the delivery's at-least-once window: the redelivered task may claim its
        # own device sends again, `claim_device.lua`); seen: the 15 of one chunk. The
        # worker dies here between calls, with the run's tasks mid-way.
        wait_for(lambda: gateways.in_flight("fcm") == 0, what="no gateway call in flight")
        worker.kill()
    finally:
        for process in first:
            process.stop()
    reached_at_kill = len(gateways.accepted("fcm"))
    assert reached_at_kill < SHOPPERS
    second = processes("2")
    try:
        wait_for(lambda: len(gateways.accepted("fcm")) >= SHOPPERS, timeout=90,
                 what="everyone reached after the restart")  # fmt: skip
        wait_for(lambda: rt.runs().status("winback").run.get("state") == "done", what="done")
        time.sleep(1.0)  # anything sent twice would arrive by now
    finally:
        for process in second:
            process.stop()
    received = Counter(r["message"]["token"] for r in gateways.accepted("fcm"))
    assert set(received) == set(tokens.values())
    assert max(received.values()) == 1, received.most_common(3)
    status = rt.runs().status("winback")
    assert sum(n for o, n in status.outcomes.items() if o.startswith("queued.")) == SHOPPERS
    rt.close()
