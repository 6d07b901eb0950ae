"""The segment and campaign commands as a user runs them (`python -m worker ...`), on a real
Redis, with a real worker and scheduler sending a paced run to the local FCM gateway."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.worker.conftest import wait_for, worker_env
from tests.worker.realtime import (
    LAPSED_CONFIG,
    Gateways,
    build_planted_index,
    campaign_settings,
    planted_catalog,
    realtime_processes,
    register,
)
from worker.campaigning.duties import start_due_runs
from worker.service import ingest
from worker.service.runtime import Runtime
from worker.settings import Settings

DAY = 86_400.0
SHOPPERS = 40
RATE = 4  # messages a second: the run takes seconds, not milliseconds
CONFIG = (
    LAPSED_CONFIG
    + f"""
[[coupon_pools]]
name = "winback"
budget_count = 1000

[[campaigns]]
name = "winback"
segment = "lapsed"
rate_per_s = {RATE}
holdout_pct = 20
title = "Picked for you"
body = "{{{{ items[0].title }}}}"
coupon = {{ pool = "winback", percent_off = 10 }}

[[campaigns]]
name = "hourly"          # off: the scheduler would start it (test_status_shows_...)
enabled = false
segment = "lapsed"
schedule = "0 * * * *"
grace_s = 600
title = "t"
body = "b"
"""
)


@pytest.fixture
def shop(settings: Settings, gateways: Gateways, tmp_path: Path) -> tuple[Runtime, dict[str, str]]:
    """40 lapsed buyers (every fifth without marketing consent) and 5 recent ones; the
    environment a `pushrec` command reads."""
    gateways.reset()
    config = tmp_path / "pushrec.toml"
    config.write_text(CONFIG)
    build_planted_index(tmp_path / "index")
    env = {**worker_env(settings), **gateways.env, "PUSHREC_CONFIG": str(config),
           "PUSHREC_INDEX_STORE": str(tmp_path / "index")}  # fmt: skip
    rt = Runtime.open(settings.model_copy(update=campaign_settings(config)))
    now = time.time()
    ingest.upsert_items(rt, planted_catalog(), now)
    for n in range(SHOPPERS + 5):
        user = f"s{n}"
        age = (40 if n < SHOPPERS else 2) * DAY
        event = {"event_id": f"e{n}", "user_id": user, "type": "purchase",
                 "item_id": f"b{n % 4}-1", "ts": now - age}  # fmt: skip
        ingest.track(rt, [event], now, "pushrec.track_batch", f"d{n}")
        register(rt, user, "fcm", f"fcm-token-{user}-{'x' * 20}", now)
        if n % 5 == 0:
            ingest.set_preferences(rt, {"user_id": user, "consent": {"marketing": {"*": False}}},
                                   now + 1)  # fmt: skip
    return rt, env


def pushrec(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker", *args], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def ok(env: dict[str, str], *args: str) -> str:
    done = pushrec(env, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_segment_show_prints_size_rfm_bands_and_a_sample(
    shop: tuple[Runtime, dict[str, str]],
) -> None:
    _, env = shop
    page = ok(env, "segment", "show", "lapsed", "--sample", "3")
    assert page.startswith(f"segment lapsed: {SHOPPERS} shoppers")
    assert "dormant_days = 30, min_orders = 1" in page
    bands = [line.split()[0] for line in page.splitlines() if line.startswith("  ")]
    assert [b for b in bands if b.isdigit()] == ["1", "2", "3", "4", "5"]
    assert "sample (3 of 40):" in page
    shown = json.loads(ok(env, "segment", "show", "lapsed", "--json"))
    assert shown["size"] == SHOPPERS and shown["rfm_cuts"]["buyers"] == SHOPPERS + 5
    missing = pushrec(env, "segment", "show", "nope")
    assert missing.returncode == 2 and "no segment 'nope'" in missing.stderr


def test_dry_run_then_the_real_run_paced_by_the_scheduler_through_the_commands(
    shop: tuple[Runtime, dict[str, str]], settings: Settings, gateways: Gateways, tmp_path: Path
) -> None:
    rt, env = shop
    listing = ok(env, "campaign", "list").splitlines()
    assert listing[0].split()[:3] == ["campaign", "segment", "schedule"]
    assert listing[1].split()[:4] == ["winback", "lapsed", "by", "hand"]

    dry = json.loads(ok(env, "campaign", "dry-run", "winback", "--now", "--json"))
    assert dry["audience"] == SHOPPERS and dry["outcomes"]["suppress.consent"] == 8
    assert dry["outcome_reasons"]["suppress.consent"].startswith("consent")
    page = ok(env, "campaign", "dry-run", "winback", "--now")
    assert "nothing was sent" in page and "suppress.consent" in page
    assert any(line.rstrip().endswith("#" * 40) for line in page.splitlines())  # a histogram
    assert gateways.accepted("fcm") == []

    with realtime_processes(settings, tmp_path, env):
        started = ok(env, "campaign", "run", "winback", "--now")
        assert f"audience {SHOPPERS}, planned {SHOPPERS}" in started
        assert "paused" in ok(env, "campaign", "pause", "winback")
        again = pushrec(env, "campaign", "run", "winback", "--now")
        assert again.returncode == 1 and "is paused; wait for it to finish" in again.stderr
        assert "resumed" in ok(env, "campaign", "resume", "winback")
        wait_for(lambda: len(gateways.accepted("fcm")) >= dry["sends"], timeout=90,
                 what="every send at the gateway")  # fmt: skip
        wait_for(lambda: rt.runs().status("winback").run.get("state") == "done", what="done")
        wait_for(lambda: sum(rt.runs().status("winback").outcomes.values())
                 >= SHOPPERS + dry["coupons"], what="every outcome counted")  # fmt: skip
    status = json.loads(ok(env, "campaign", "status", "winback", "--json"))
    assert status["outcomes"] == dry["outcomes"]
    assert status["coupons_issued"] == dry["coupons"]
    assert status["all_runs"]["held_out"] == dry["held_out"]
    page = ok(env, "campaign", "status", "winback")
    assert "done" in page and "100%" in page and "coupons issued" in page

    # paced: the scheduler hands out at most two seconds' worth a tick, so the last of
    # the run's shoppers cannot reach the gateway sooner than this after the run began
    received = sorted(float(r["at"]) for r in gateways.accepted("fcm"))
    assert len(received) == dry["sends"]
    first_possible = float(status["run"]["started_at"]) + (SHOPPERS - 2 * RATE) / RATE
    assert received[-1] >= first_possible


def test_status_shows_the_missed_runs_policy_and_the_skips(
    shop: tuple[Runtime, dict[str, str]],
) -> None:
    rt, env = shop
    [_, hourly] = rt.settings.campaigns
    now = time.time()
    rt.redis.set(rt.keys.campaign("hourly").last_occurrence, repr(now - 4 * 3600))
    on = hourly.model_copy(update={"enabled": True})
    start_due_runs(rt.redis, rt.keys, rt.runs(), [on], now)  # down for four hours
    status = json.loads(ok(env, "campaign", "status", "hourly", "--json"))
    skipped = [h for h in status["history"] if h["state"] == "skipped"]
    assert len(skipped) >= 3
    assert status["missed_runs"]["grace_s"] == 600
    page = ok(env, "campaign", "status", "hourly")
    assert "missed runs: started late within 600 s" in page
    assert "superseded by a later occurrence" in page
