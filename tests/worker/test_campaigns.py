"""Campaigns in-process on a real Redis and the local gateways: a dry run and the real run
on the same state agree; pacing; the missed-run policy; bad configs named with their line."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.clock import FIXED_NOW
from tests.worker.realtime import Gateways, gateway_shop, register
from worker.campaigning import dry_run as dry_runs
from worker.campaigning.dry_run import dry_run
from worker.campaigning.runs import Runs
from worker.campaigning.timing import catch_up, due_at
from worker.campaigns import Campaign
from worker.contract import CAMPAIGN_FIRE, DELIVER
from worker.coupon_config import CouponPool
from worker.coupons.ledger import DRY_RUN_CODE
from worker.delivery.requests import DeliveryRequest
from worker.policy.jobs import FireJob
from worker.segmenting.query import SegmentQuery
from worker.segments import Segment
from worker.service import ingest
from worker.service.dry_run_pool import pooled
from worker.service.runtime import Runtime
from worker.settings import Settings, SettingsError

DAY = 86_400.0
SEGMENT = Segment.model_validate({"name": "lapsed", "min_orders": 1, "dormant_days": 30})
CAMPAIGN = Campaign(
    name="winback", segment="lapsed", holdout_pct=20, coupon={"pool": "winback", "percent_off": 10},  # type: ignore[arg-type]
    title="Picked for you", body="{{ items[0].title }}{% if coupon %} with {{ coupon }}{% endif %}",
)  # fmt: skip


@pytest.fixture
def shop(
    settings: Settings, gateways: Gateways, tmp_path: Path
) -> Iterator[tuple[Runtime, list[tuple[str, dict[str, Any]]]]]:
    queued: list[tuple[str, dict[str, Any]]] = []
    overrides = {
        "segments": (SEGMENT,),
        "campaigns": (CAMPAIGN,),
        "coupon_pools": (CouponPool(name="winback", budget_count=1000),),
    }
    with gateway_shop(
        settings, gateways, tmp_path / "index", lambda t, kw: queued.append((t, kw)), **overrides
    ) as rt:
        yield rt, queued


def _shoppers(rt: Runtime, gateways: Gateways, now: float) -> None:
    """40 lapsed buyers (8 without marketing consent), 5 recent buyers (not in the segment)."""
    for n in range(45):
        user = f"s{n}"
        ts = now - (40 if n < 40 else 2) * DAY
        event = {"event_id": f"e{n}", "user_id": user, "type": "purchase",
                 "item_id": f"b{n % 4}-1", "ts": ts}  # fmt: skip
        ingest.track(rt, [event], now, "pushrec.track_batch", f"d{n}")
        register(rt, user, "fcm", f"fcm-token-{user}-{'x' * 20}", now)
        if n % 5 == 0:
            ingest.set_preferences(rt, {"user_id": user, "consent": {"marketing": {"*": False}}},
                                   now + 1)  # fmt: skip


def _run_tasks(rt: Runtime, queued: list[tuple[str, dict[str, Any]]], now: float) -> None:
    """Run what the run queued, as the workers would: campaign chunks, then deliveries."""
    while queued:
        task, kwargs = queued.pop(0)
        if task == CAMPAIGN_FIRE:
            jobs = [FireJob.from_kwargs(j) for j in kwargs["jobs"]]
            rt.runs().fire_chunk(rt.firer(), kwargs["run"], jobs, now, "t", True)
        elif task == DELIVER:
            rt.sender().deliver_many([DeliveryRequest(m) for m in kwargs["message_ids"]], now)


def test_the_dry_run_and_the_real_run_agree(
    shop: tuple[Runtime, list[tuple[str, dict[str, Any]]]], gateways: Gateways
) -> None:
    rt, queued = shop
    now = time.time()
    _shoppers(rt, gateways, now - 10)
    dry = dry_run(rt.redis, rt.keys, rt.runs(), rt.segment_query(), rt.firer(),
                  CAMPAIGN, now, now, immediate=True)  # fmt: skip
    assert dry["audience"] == 40
    assert dry["outcomes"]["suppress.consent"] == 8
    assert dry["sends"] + dry["held_out"] == 32 and dry["held_out"] > 0
    assert dry["coupons"] == dry["sends"] and dry["coupon_face_value"] > 0
    assert dry["samples"][0]["items"][0]["reason"]
    # the sample reads as the shopper's message: the offer's text, a stand-in for the code
    assert all(x["body"].endswith(f" with {DRY_RUN_CODE}") for x in dry["samples"])
    assert gateways.accepted("fcm") == []  # a dry run sends nothing

    runs = rt.runs()
    run = runs.start(CAMPAIGN, now, now, immediate=True)
    assert (run["state"], run["audience"], run["planned"]) == ("sending", "40", "40")
    assert runs.dispatch(CAMPAIGN, now, rt.enqueue) == 40
    _run_tasks(rt, queued, now)

    status = runs.status("winback")
    assert status.run["state"] == "done" and status.due_left == 0
    coupons = status.outcomes.pop("coupons")
    assert status.outcomes == dry["outcomes"]
    assert coupons == dry["coupons"]
    [pool] = rt.coupons.status(now, ["winback"])  # issued for real, priced alike
    assert pool["issued"] == dry["coupons"]
    assert pool["face_value_issued"] == pytest.approx(dry["coupon_face_value"])
    assert len(gateways.accepted("fcm")) == dry["sends"]
    stats = rt.audit.stats(["winback"])["winback"]
    assert stats["held_out"] == dry["held_out"]

    # the same run again (a chunk sent twice after a crash) reaches nobody twice
    for user in ("s1", "s2", "s3"):
        rt.redis.zadd(rt.keys.segment_of(user).run_due(run["id"]), {user: now})
    rt.redis.hset(rt.keys.campaign("winback").run, "state", "sending")
    runs.dispatch(CAMPAIGN, now + 1, rt.enqueue)
    _run_tasks(rt, queued, now + 1)
    assert len(gateways.accepted("fcm")) == dry["sends"]
    assert runs.status("winback").outcomes == {**dry["outcomes"], "coupons": coupons}


def test_a_dry_run_on_a_pool_of_processes_adds_up_to_the_same(
    shop: tuple[Runtime, list[tuple[str, dict[str, Any]]]],
    gateways: Gateways,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rt, _ = shop
    now = time.time()
    _shoppers(rt, gateways, now - 10)
    monkeypatch.setattr(dry_runs, "PLAN_CHUNK", 7)  # several chunks of the 40
    monkeypatch.setattr(dry_runs, "POOLED_FROM", 0)
    args = (rt.redis, rt.keys, rt.runs(), rt.segment_query(), rt.firer(),
            CAMPAIGN, now, now)  # fmt: skip
    here = dry_run(*args, immediate=True)
    pooled_run = dry_run(*args, immediate=True, fire=pooled(rt.settings, 2))

    def without_codes(report: dict[str, Any]) -> dict[str, Any]:  # coupon codes are random
        shown = [(x["user_id"], x["items"]) for x in report["samples"]]
        return {**report, "samples": shown}

    assert without_codes(pooled_run) == without_codes(here)
    assert here["audience"] == 40 and here["sends"] > 0 and len(here["samples"]) == 5


def _paced_run(rt: Runtime, gateways: Gateways, now: float) -> tuple[Runs, Campaign]:
    """The shoppers, and a run of the campaign at 7.5 messages a second started at `now`."""
    _shoppers(rt, gateways, now - 10)
    paced = CAMPAIGN.model_copy(update={"rate_per_s": 7.5})
    runs = rt.runs()
    runs.start(paced, now, now, immediate=True)
    return runs, paced


def test_a_run_is_paced_at_its_rate_and_can_be_paused(
    shop: tuple[Runtime, list[tuple[str, dict[str, Any]]]], gateways: Gateways
) -> None:
    rt, queued = shop
    now = time.time()
    runs, paced = _paced_run(rt, gateways, now)
    sent = [runs.dispatch(paced, now + t, rt.enqueue) for t in (1, 2, 3)]
    assert sent == [7, 8, 7]  # 7.5 a second; the half carries over
    assert runs.set_paused("winback", True) == "paused"
    assert runs.dispatch(paced, now + 4, rt.enqueue) == 0
    assert runs.set_paused("winback", False) == "sending"
    assert runs.dispatch(paced, now + 10, rt.enqueue) == 7  # a second's worth after a pause
    assert sum(len(kw["jobs"]) for t, kw in queued if t == CAMPAIGN_FIRE) == 29


def test_the_pace_holds_however_often_the_scheduler_ticks(
    shop: tuple[Runtime, list[tuple[str, dict[str, Any]]]], gateways: Gateways
) -> None:
    """Ticks every half second send half a second's worth each (each tick used to send
    at least a second's worth, so ticks closer than a second overshot the rate)."""
    rt, _ = shop
    now = time.time()
    runs, paced = _paced_run(rt, gateways, now)
    sent = [runs.dispatch(paced, now + t / 2, rt.enqueue) for t in range(1, 7)]
    assert set(sent) == {3, 4} and sum(sent) == 22  # 3.75 a tick, fractions carried


def test_no_send_after_the_end_date_and_the_dry_run_counts_them(
    shop: tuple[Runtime, list[tuple[str, dict[str, Any]]]], gateways: Gateways
) -> None:
    """Local time: shoppers in UTC are reached 14 h after the anchor, those in New York
    19 h after; the campaign ends in between."""
    rt, queued = shop
    now = time.time()
    _shoppers(rt, gateways, now - 10)
    for n in range(1, 40, 2):
        ingest.set_preferences(rt, {"user_id": f"s{n}", "timezone": "America/New_York"}, now)
    ends = datetime.fromtimestamp(now + 16 * 3600, UTC)
    local = CAMPAIGN.model_copy(update={"local_time": True, "ends": ends})
    dry = dry_run(rt.redis, rt.keys, rt.runs(), rt.segment_query(), rt.firer(),
                  local, now, now)  # fmt: skip
    assert dry["after_end_date"] == 20 and dry["audience"] == 40
    assert dry["sends"] + dry["held_out"] == 16  # the 20 in UTC, but for 4 without consent

    runs = rt.runs()
    runs.start(local, now, now)
    for hours in (14, 15, 17, 20):  # the scheduler's ticks, before and after the end
        runs.dispatch(local, now + hours * 3600 + 1, rt.enqueue)
        _run_tasks(rt, queued, now + hours * 3600 + 1)
    status = runs.status("winback")
    assert status.run["state"] == "ended" and status.due_left == 20
    assert len(gateways.accepted("fcm")) == dry["sends"]


def test_missed_runs_run_late_within_grace_else_are_skipped() -> None:
    hourly = Campaign(name="c", segment="s", title="t", body="b", schedule="0 * * * *",
                      grace_s=600)  # fmt: skip
    hour = 3600.0
    start = FIXED_NOW  # 09:00Z, on the hour
    late = catch_up(hourly, start - 1, start + 300)
    assert (late.run_at, late.skipped) == (start, [])
    down = catch_up(hourly, start - 1, start + 3 * hour + 900)  # down for three hours
    assert down.run_at is None and down.skipped == [start + n * hour for n in range(4)]
    caught = catch_up(hourly, start - 1, start + 3 * hour + 60)
    assert caught.run_at == start + 3 * hour and len(caught.skipped) == 3


def test_local_time_and_send_window_move_each_shoppers_time() -> None:
    local = Campaign(name="c", segment="s", title="t", body="b", schedule="0 10 * * *",
                     local_time=True, send_window="09:00-20:00")  # fmt: skip
    anchor = FIXED_NOW - 9 * 3600 + 10 * 3600 - 14 * 3600  # 10:00 at UTC+14 on that day
    assert due_at(local, anchor, {}, False) == anchor + 14 * 3600  # 10:00 UTC
    assert due_at(local, anchor, {"timezone": "America/New_York"}, False) == anchor + 19 * 3600
    quiet = {"timezone": "UTC", "quiet_hours": "09:30-11:00"}
    assert due_at(local, anchor, quiet, False) == anchor + 15 * 3600  # 11:00 UTC
    windowed = Campaign(name="c", segment="s", title="t", body="b", send_window="09:00-20:00")
    night = FIXED_NOW + 13 * 3600  # 22:00Z
    assert due_at(windowed, night, {}, False) == FIXED_NOW + 24 * 3600  # 09:00Z next day
    assert due_at(windowed, night, {}, True) == night  # --now


def test_a_device_the_gateway_declares_gone_leaves_the_channel_segment(
    shop: tuple[Runtime, list[tuple[str, dict[str, Any]]]], gateways: Gateways
) -> None:
    rt, queued = shop
    now = time.time()
    _shoppers(rt, gateways, now - 10)
    on_fcm = Segment.model_validate({"name": "on_fcm", "channel": "fcm"})
    query = SegmentQuery(rt.redis, rt.keys, {"on_fcm": on_fcm})
    assert query.size_and_sample("on_fcm", now, 0)[0] == 45
    gateways.unregister("fcm", *(f"fcm-token-s{n}-{'x' * 20}" for n in range(45)))
    run = rt.runs().start(CAMPAIGN, now, now, immediate=True)
    rt.runs().dispatch(CAMPAIGN, now, rt.enqueue)
    _run_tasks(rt, queued, now)
    outcome = rt.redis.hgetall(rt.keys.segment(0).run_done(run["id"]))
    sent = {user for user, o in outcome.items() if o == "queued.all_passed"}
    assert sent  # each of them met the gateway's "unregistered"
    size, members = query.size_and_sample("on_fcm", now, 100)
    assert size == 45 - len(sent) and sent.isdisjoint(members)


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ('[[segments]]\nname = "s"\nmin_orderz = 2\n', "segments.0.min_orderz.*line 1"),
        ('[[segments]]\nname = "s"\nmin_orders = 2\n\n[[campaigns]]\nname = "c"\n'
         'segment = "nope"\ntitle = "t"\nbody = "b"\n', "unknown|not declared.*line 5"),
        ('[[segments]]\nname = "s"\nmin_orders = 2\n[[campaigns]]\nname = "c"\nsegment = "s"\n'
         'schedule = "0 0 30 2 *"\ntitle = "t"\nbody = "b"\n', "never fires.*line 4"),
        ('[[segments]]\nname = "s"\nmin_orders = 2\n[[campaigns]]\nname = "c"\nsegment = "s"\n'
         'title = "{{ items[0"\nbody = "b"\n', "template.*line 4"),
        ('[[segments]]\nname = "s"\nall = ["t"]\n', "unknown segment 't'"),
        ('[[rules]]\nname = "r"\nkind = "cart_abandoned"\ntitle = "t"\nbody = "{% if x %}"\n',
         "rules.0.body.*template does not compile.*line 1"),
    ],
)  # fmt: skip
def test_a_bad_segment_or_campaign_stops_start_up_naming_field_and_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, table: str, words: str
) -> None:
    config = tmp_path / "pushrec.toml"
    config.write_text(table)
    monkeypatch.setenv("PUSHREC_CONFIG", str(config))
    with pytest.raises(SettingsError, match=f"(?s){words}"):
        Settings.load()
