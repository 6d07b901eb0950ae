"""`pushrec replay`'s engine end to end on a slice of the shipped sample: real worker and
scheduler processes, the local gateways and an embedded Redis, on the simulated clock."""

from __future__ import annotations

import csv
import gzip
import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from indexing import parse_ts
from indexing.events import open_text
from indexing.sample import sample_files
from worker.cli import main
from worker.replay.config import (
    DEMO_RULES,
    ConfigError,
    apply_overrides,
    load_config,
    rules_of,
    write_config,
)
from worker.replay.engine import (
    _JOB_SLACK_S,
    _STEP_S,
    ReplayPlan,
    ReplayRun,
    Row,
    _by_shopper,
    replay,
)
from worker.replay.report import write_report
from worker.replay.results import collect, wilson
from worker.service.runtime import Runtime


def _slice(path: Path, start: str, end: str, users: int) -> Path:
    """The sample's events in [start, end) of its first `users` shoppers (by id)."""
    with open_text(sample_files().events) as fh:
        rows = [r for r in csv.DictReader(fh) if start <= r["ts"] < end]
    keep = sorted({r["user_id"] for r in rows})[:users]
    rows = [r for r in rows if r["user_id"] in set(keep)]
    with gzip.open(path, "wt", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        # a bad row is accounted for, not fatal
        writer.writerow({**rows[-1], "event_id": "bad-1", "ts": "not a time"})
    return path


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_replay_pushes_to_the_local_gateways_and_leaves_nothing_running(tmp_path: Path) -> None:
    events = _slice(tmp_path / "events.csv.gz", "2011-02-01", "2011-03-04", users=300)
    config = write_config(load_config(None, DEMO_RULES), tmp_path / "pushrec.toml")
    plan = ReplayPlan(
        events=events, items=sample_files().items, shoppers=sample_files().shoppers,
        config=config, run_dir=tmp_path / "run", replay_from=parse_ts("2011-03-01T00:00:00"),
        max_events=400, budget_s=26.0, tail_s=3600.0,
    )  # fmt: skip
    received: dict[str, int] = {}

    def collect_and_ask_gateways(run: ReplayRun, rt: Runtime) -> dict[str, Any]:
        gateways = json.loads((run.plan.run_dir / "gateways" / "gateways.json").read_text())
        for channel, url in gateways["admin"].items():
            rows = httpx.get(f"{url}/_admin/received", timeout=10).json()
            received[channel] = sum(1 for r in rows if r.get("kind") == "message")
        return collect(run, rt)

    run, results = replay(plan, collect=collect_and_ask_gateways)

    assert not any(psutil.pid_exists(pid) and _alive(pid) for pid in run.stack_pids)
    assert sum(received.values()) > 0
    delivered = sum(r["delivered"] for r in results["rules"].values())
    assert delivered > 0 and delivered <= sum(received.values())
    account = results["input"]
    assert account["replayed"] == 400 and account["rejected_before_sending"] == {"bad_ts": 1}
    # every row accounted for: applied (past and replayed), left after --max-events, bad
    assert account["rows"] == account["applied"] + account["not_replayed"] + 1
    assert results["shoppers"]["synthetic"] == 300
    assert set(results["rules"]) == {r.name for r in DEMO_RULES}
    report = write_report(results, tmp_path / "report.html")
    text = report.read_text()
    assert "CC BY 4.0" in text and "synthetic" in text
    assert "http://" not in text.replace("http://www.w3.org", "")  # nothing fetched
    assert text.count("data:image/png;base64,") == 5
    if shutil.which("chromium"):
        assert _rendered(report) == {"images": 5, "decoded": 5, "overflow": False}


_CHECK = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const result = {images: images.length,
                  decoded: images.filter(i => i.complete && i.naturalWidth > 0).length,
                  overflow: document.documentElement.scrollWidth > window.innerWidth};
  document.body.setAttribute("data-check", JSON.stringify(result));
});
</script>"""


def _rendered(report: Path) -> dict[str, Any]:
    """Open the report in headless Chromium at 1200 px wide: how many images decoded,
    and whether the page is wider than the window."""
    probe = report.with_name("probe.html")
    probe.write_text(report.read_text().replace("</body>", _CHECK + "</body>"))
    done = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,900",
         "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    found = re.search(r"data-check=\"([^\"]*)\"", done.stdout)
    assert found, done.stdout[-500:]
    result: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return result


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_as_fast_as_possible_keeps_delays_and_stops_the_clock_for_each_due_job(
    tmp_path: Path,
) -> None:
    events = _slice(tmp_path / "events.csv.gz", "2011-02-01", "2011-03-04", users=300)
    next_day_only = apply_overrides(
        load_config(None, DEMO_RULES), ["rules.cross_sell_now.enabled=false"]
    )
    config = write_config(next_day_only, tmp_path / "pushrec.toml")
    plan = ReplayPlan(
        events=events, items=sample_files().items, shoppers=sample_files().shoppers,
        config=config, run_dir=tmp_path / "run", replay_from=parse_ts("2011-03-01T00:00:00"),
        max_events=300, budget_s=120.0, tail_s=2 * 86_400.0, as_fast_as_possible=True,
    )  # fmt: skip

    run, results = replay(plan, collect=collect)

    assert results["input"]["replayed"] == len(run.sent_at) == 300
    origins = [step.origin for step in run.steps]
    assert len(origins) > 2 and origins == sorted(origins)  # moved on, never back
    # a day's delay waits a simulated day, plus at most the step its event was sent in
    # and the slack a job may come due late by (firings the policy deferred, to the end
    # of quiet hours, are counted apart)
    delays = results["simulated_delay_s"]["cross_sell_next_day"]
    late = _STEP_S + _JOB_SLACK_S + 60
    out_of_bounds = [d for d in delays if not 86_400 <= d <= 86_400 + late]
    assert delays and not out_of_bounds, out_of_bounds
    # the tail ran until no job was due within it: the next-day messages all went out
    rule = results["rules"]["cross_sell_next_day"]
    assert rule["contacted"] + rule["held_out"] > 0


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_step_with_a_big_order_goes_in_tasks_the_workers_take_whole() -> None:
    """The full Online Retail replay had 101 lines refused (`oversize_batch`): a shopper
    with more lines in one step than a task may carry. Tasks stay within the limit, every
    row goes once, and each shopper's rows keep their order across tasks."""
    rows = [Row({"event_id": f"big-{n}", "user_id": "big"}, 100.0) for n in range(1_200)]
    rows += [Row({"event_id": f"s{n}", "user_id": f"u{n % 37}"}, 100.0 + n) for n in range(300)]
    tasks = _by_shopper(rows, 500)
    assert max(len(t) for t in tasks) <= 500
    sent = [r.event["event_id"] for t in tasks for r in t]
    assert sorted(sent) == sorted(r.event["event_id"] for r in rows)
    user_of = {r.event["event_id"]: r.event["user_id"] for r in rows}
    for user in set(user_of.values()):
        theirs = [e for e in sent if user_of[e] == user]
        assert theirs == [r.event["event_id"] for r in rows if r.event["user_id"] == user]


def test_wilson_intervals_hold_their_rate() -> None:
    # 0 hits in 44 put the lower bound at 7e-18 by rounding: the report's error bar was
    # negative and matplotlib refused to draw it
    for hits, n in [(0, 44), (0, 1), (44, 44), (3, 7), (1, 1000)]:
        interval = wilson(hits, n)
        assert interval is not None
        low, high = interval
        assert 0.0 <= low <= hits / n <= high <= 1.0, (hits, n, interval)
    assert wilson(0, 0) is None


def test_overrides_change_one_rule_and_refuse_unknown_names(tmp_path: Path) -> None:
    config = apply_overrides(
        load_config(None, DEMO_RULES),
        ["rules.cross_sell_next_day.delay_s=3600", "cap_marketing_per_day=3"],
    )
    rules = {r.name: r for r in rules_of(write_config(config, tmp_path / "c.toml"))}
    assert rules["cross_sell_next_day"].delay_s == 3600
    assert rules["cross_sell_now"].delay_s == 0
    assert config["cap_marketing_per_day"] == 3
    with pytest.raises(ConfigError, match="no rule 'nope'"):
        apply_overrides(config, ["rules.nope.delay_s=1"])
    with pytest.raises(ConfigError, match="delay_s"):
        apply_overrides(config, ["rules.replenish.delay_s=-5"])


def test_replay_refuses_a_configured_real_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    config = tmp_path / "shop.toml"
    config.write_text('fcm_credentials = "/etc/shop/fcm.json"\n')
    with pytest.raises(SystemExit) as exc:
        main(["replay", "--events", str(sample_files().events), "--config", str(config)])
    assert exc.value.code == 2
    assert "fcm_credentials" in capsys.readouterr().err
