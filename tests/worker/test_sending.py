"""Firing and delivery in one process against the local gateways: send-time re-checks,
device handling, a batch fired together, caps, holdout and reasons."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.worker.realtime import (
    Gateways,
    fire_post_purchase,
    gateway_shop,
    held_out,
    planted_catalog,
    register,
    shopper,
)
from worker.delivery.outbox import MessageRecord
from worker.delivery.requests import DeliveryRequest, FreshMessage
from worker.policy.jobs import FireJob
from worker.service import ingest
from worker.service.runtime import Runtime
from worker.settings import Settings
from worker.shoppers.contacts import device_id


def test_consent_withdrawn_after_the_trigger_suppresses_at_send_time(
    recording_shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, _ = recording_shop
    user = shopper(rt, gateways, "c")
    mid = fire_post_purchase(rt, user, "b0-1")
    ingest.set_preferences(
        rt, {"user_id": user, "consent": {"marketing": {"*": False}}}, time.time() + 1
    )

    outcome = rt.sender().deliver_many([DeliveryRequest(mid)], time.time() + 2)[0]

    assert outcome == {"action": "suppressed", "reason": "consent withdrawn or no active device"}
    assert rt.outbox.state(mid)["state"] == "suppressed"
    assert gateways.accepted("fcm") == []


def test_item_bought_in_the_meantime_suppresses_an_item_rule(
    recording_shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, queued = recording_shop
    user = "buyer"
    register(rt, user, "fcm", gateways.targets["fcm"], time.time())
    now = time.time()
    ingest.track_one(
        rt,
        {"event_id": "v", "user_id": user, "type": "view", "item_id": "b2-2", "ts": now},
        now,
        "d",
    )
    ingest.upsert_items(rt, [{"item_id": "b2-2", "price": 1.0}], now)  # price drop fans out
    [decision] = rt.audit.decisions(user)  # fired at once, its delivery queued
    assert decision["action"] == "queued", decision
    assert ("pushrec.deliver", {"message_ids": [decision["message_id"]]}) in queued
    ingest.track_one(
        rt,
        {"event_id": "b", "user_id": user, "type": "purchase", "item_id": "b2-2", "ts": now + 1},
        now + 1,
        "d",
    )

    outcome = rt.sender().deliver_many([DeliveryRequest(decision["message_id"])], now + 2)[0]

    assert outcome["reason"] == "bought in the meantime"
    assert gateways.accepted("fcm") == []


def test_gateway_503_is_retried_later_from_the_delayed_set_and_sent_once(
    recording_shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, _ = recording_shop
    user = shopper(rt, gateways, "r")
    mid = fire_post_purchase(rt, user, "b3-1")
    gateways.script("fcm", [{"status": 503, "retry_after": "7"}])

    first = rt.sender().deliver_many([DeliveryRequest(mid)], time.time())[0]
    assert first["action"] == "retrying" and first["retry_after"] == pytest.approx(7, abs=1)
    assert rt.delayed.due_at(f"deliver:{mid}") is not None
    [claimed] = rt.delayed.claim_due(time.time() + 8)
    [second] = rt.sender().deliver_many(
        DeliveryRequest.from_kwargs(claimed.job.kwargs), time.time()
    )
    assert second["action"] == "sent"
    again = rt.sender().deliver_many([DeliveryRequest(mid)], time.time())[0]
    assert again["action"] == "settled"
    assert len(gateways.accepted("fcm")) == 1

    report = ingest.erase_user(rt, user)  # erasure takes the shopper's messages too
    assert report["messages_removed"] == 1
    assert rt.outbox.get(mid) is None


def test_a_message_whose_deliver_task_was_lost_is_sent_again_by_the_sweeper(
    recording_shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    from worker.service.scheduler import resend_stuck

    rt, queued = recording_shop
    user = shopper(rt, gateways, "l")
    mid = fire_post_purchase(rt, user, "b1-1")
    queued.clear()  # the deliver task was lost with the broker message
    assert resend_stuck(rt.outbox, lambda t, k: queued.append((t, k)), older_than_s=0) == 1
    [(task, kwargs)] = queued
    assert (task, kwargs) == ("pushrec.deliver", {"message_ids": [mid]})
    assert rt.sender().deliver_many([DeliveryRequest(mid)], time.time())[0]["action"] == "sent"
    assert rt.outbox.stuck(time.time() + 1000, 0) == []  # settled: off the sweep


def test_a_batch_of_events_fires_together_and_one_deliver_task_settles_each_message(
    recording_shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    """A price drop fans out to three shoppers: fired together, one deliver task for the
    three messages, whose results are per message: sent, suppressed at send time, and a
    device the gateway no longer knows."""
    rt, queued = recording_shop
    users = [u for u in (f"batch{n}" for n in range(100)) if not held_out(u, "price_drop")][:3]
    sent_to, withdrawn, gone = users
    now = time.time()
    tokens = {u: f"fcm-token-{u}-{'x' * 20}" for u in users}
    for user in users:
        register(rt, user, "fcm", tokens[user], now)
    gateways.unregister("fcm", tokens[gone])
    views = [
        {"event_id": f"v-{u}", "user_id": u, "type": "view", "item_id": "b2-2", "ts": now}
        for u in users
    ]
    ingest.track_batch(rt, views, now, "d")
    ingest.upsert_items(rt, [{"item_id": "b2-2", "price": 1.0}], now)
    [kwargs] = [k for task, k in queued if task == "pushrec.deliver"]
    mids = kwargs["message_ids"]
    assert len(mids) == 3 and len(set(mids)) == 3
    ingest.set_preferences(
        rt, {"user_id": withdrawn, "consent": {"marketing": {"*": False}}}, now + 1
    )

    outcomes = rt.sender().deliver_many(DeliveryRequest.from_kwargs(kwargs), now + 2)

    owners = [record.user_id for mid in mids if (record := rt.outbox.get(mid))]
    actions = {user: o["action"] for user, o in zip(owners, outcomes, strict=True)}
    assert actions == {sent_to: "sent", withdrawn: "suppressed", gone: "failed"}
    assert [r["message"]["token"] for r in gateways.accepted("fcm")] == [tokens[sent_to]]
    assert rt.contacts.devices(gone) and not any(
        d.get("active", True) for d in rt.contacts.devices(gone).values()
    )
    stats = rt.audit.stats(["price_drop"])["price_drop"]
    assert (stats["delivered"], stats["suppressed"], stats["failed"]) == (1, 1, 1)

    again = rt.sender().deliver_many(DeliveryRequest.from_kwargs(kwargs), now + 3)
    assert [o["action"] for o in again] == ["settled"] * 3
    assert rt.audit.stats(["price_drop"])["price_drop"]["delivered"] == 1


def test_when_the_best_candidates_are_sold_out_firing_reads_further_down_the_pool(
    recording_shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, _ = recording_shop
    user = shopper(rt, gateways, "s")
    sold_out = [i["item_id"] for i in planted_catalog() if i["category"] == "block0"]
    ingest.upsert_items(
        rt, [{"item_id": i, "stock": 0} for i in sold_out if i != "b0-1"], time.time()
    )
    mid = fire_post_purchase(rt, user, "b0-1")
    [decision] = [d for d in rt.audit.decisions(user) if d["message_id"] == mid]
    chosen = [c["item_id"] for c in decision["candidates"]]
    assert len(chosen) == 3 and not set(chosen) & set(sold_out)
    assert decision["index_version"] == rt.index.version is not None  # what ranked them


def test_one_failing_job_or_a_repeated_one_leaves_the_rest_of_the_batch_alone(
    recording_shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, queued = recording_shop
    users = [u for u in (f"j{n}" for n in range(100)) if not held_out(u)][:2]
    now = time.time()
    for user in users:
        register(rt, user, "fcm", f"fcm-token-{user}-{'x' * 20}", now)
    good = FireJob("post_purchase", users[0], "t-good", now, ("b0-1",), {})
    broken = FireJob("price_drop", users[1], "t-broken", now, (), {})  # an item rule, no item

    results = rt.firer().fire_many([good, broken, good], now)

    assert [r["action"] for r in results] == ["queued", "error", "duplicate"]
    assert "IndexError" in results[1]["reason"]
    [kwargs] = [k for task, k in queued if task == "pushrec.deliver"]
    assert kwargs["message_ids"] == [results[0]["message_id"]]
    assert rt.audit.stats(["price_drop"])["price_drop"]["failed"] == 1

    mid = results[0]["message_id"]
    requests = [DeliveryRequest(mid), DeliveryRequest(mid)]
    assert [o["action"] for o in rt.sender().deliver_many(requests, now + 1)] == ["sent"] * 2
    assert len(gateways.accepted("fcm")) == 1


@pytest.mark.parametrize("guess", ["none", "every device", "stale"])
def test_a_device_now_registered_to_another_shopper_is_skipped_and_taken_off_the_list(
    recording_shop: tuple[Runtime, list[Any]],
    gateways: Gateways,
    guess: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whether the owners are read with the re-check (the devices the firing saw, handed
    over with a message it just stored), partly, or after it (a deliver task)."""
    rt, _ = recording_shop
    now = time.time()
    user = shopper(rt, gateways, "own", now)  # device: the FCM target token
    kept = f"fcm-token-kept-{'x' * 20}"
    register(rt, user, "fcm", kept, now)
    shared = device_id("fcm", gateways.targets["fcm"])
    rt.redis.delete(rt.keys.device_owner(shared))  # expired, as its TTL would have it
    register(rt, "someone-else", "fcm", gateways.targets["fcm"], now + 1)
    assert shared in rt.contacts.devices(user)  # no owner was left to move it from
    mid = fire_post_purchase(rt, user, "b0-1", now + 2)
    [(record, _)] = rt.outbox.load_many([mid])
    assert record is not None
    devices = {
        "none": None,
        "every device": (shared, device_id("fcm", kept)),
        "stale": (shared, "a-device-removed-since"),
    }[guess]
    fresh = None if devices is None else {mid: FreshMessage(record, devices)}
    owner_reads: list[set[str]] = []
    real_owners = rt.contacts.owners

    def owners(ids: list[str], pipe: Any) -> None:
        owner_reads.append(set(ids))
        real_owners(ids, pipe)

    monkeypatch.setattr(rt.contacts, "owners", owners)

    [outcome] = rt.sender().deliver_many([DeliveryRequest(mid)], now + 3, "task", fresh)

    # the owners the re-check's trip did not read come in a trip of their own
    both = {shared, device_id("fcm", kept)}
    assert (
        owner_reads
        == {
            "none": [set(), both],
            "every device": [both],
            "stale": [set(devices or ()), {device_id("fcm", kept)}],
        }[guess]
    )
    assert (outcome["action"], outcome["delivered"]) == ("sent", 1)
    assert [r["message"]["token"] for r in gateways.accepted("fcm")] == [kept]
    assert set(rt.contacts.devices(user)) == {device_id("fcm", kept)}
    assert shared in rt.contacts.devices("someone-else")
    skipped = [a for a in rt.outbox.attempts(mid) if "skipped" in a]
    assert skipped == [
        {
            "at": now + 3,
            "attempt": 0,
            "device_id": shared,
            "skipped": "registered to another shopper",
        }
    ]
    assert rt.metrics.snapshot()["delivery.moved_device"] == 1


def test_items_pushed_by_another_message_since_it_was_decided_are_not_pushed_again(
    recording_shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, _ = recording_shop
    now = time.time()
    user = shopper(rt, gateways, "n", now)
    first, second = (
        MessageRecord(
            id=f"m-{rule}", rule=rule, user_id=user, trigger_id="t", items=["b0-2", "b0-3"],
            title="t", body="b", purpose="marketing", channels=["fcm"], created_at=now,
        )
        for rule in ("post_purchase", "browse_abandoned")
    )  # fmt: skip
    rt.outbox.create_many([first, second])  # decided together: neither saw the other

    [sent] = rt.sender().deliver_many([DeliveryRequest(first.id)], now + 1)
    [repeat] = rt.sender().deliver_many([DeliveryRequest(second.id)], now + 2)

    assert sent["action"] == "sent"
    assert repeat == {
        "action": "suppressed",
        "reason": "no_repeat: every item was pushed by another message since",
    }
    assert len(gateways.accepted("fcm")) == 1


def test_a_cap_reached_at_send_time_suppresses_the_second_message_and_undoes_its_claim(
    settings: Settings, gateways: Gateways, tmp_path: Path
) -> None:
    queued: list[tuple[str, dict[str, Any]]] = []
    enqueue = lambda task, kwargs: queued.append((task, kwargs))  # noqa: E731
    with gateway_shop(
        settings, gateways, tmp_path / "index", enqueue, cap_marketing_per_day=1
    ) as rt:
        user = shopper(rt, gateways, "capped")
        now = time.time()
        ingest.track_one(
            rt,
            {"event_id": "p1", "user_id": user, "type": "purchase", "item_id": "b0-1", "ts": now},
            now,
            "t",
        )
        jobs = [
            FireJob("post_purchase", user, trigger, now, ("b0-1",), {}) for trigger in ("a", "b")
        ]
        decisions = rt.firer().fire_many(jobs, now)  # both pass: nothing is sent yet
        first, second = (str(d["message_id"]) for d in decisions)

        outcomes = rt.sender().deliver_many(
            [DeliveryRequest(first), DeliveryRequest(second)], now + 1, "deliver-task"
        )

        assert outcomes[0]["action"] == "sent"
        assert outcomes[1]["action"] == "suppressed"
        assert outcomes[1]["reason"].startswith("cap reached at send time")
        held = rt.outbox.state(second)
        assert held["state"] == "suppressed"
        assert not any(k.startswith("dev:") for k in held)  # its device claim is undone
        assert len(gateways.accepted("fcm")) == 1


def test_a_price_drop_whose_item_sold_out_again_is_suppressed_not_sent_without_it(
    recording_shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, _ = recording_shop
    user = shopper(rt, gateways, "pd")
    now = time.time()
    ingest.upsert_items(rt, [{"item_id": "b0-3", "stock": 0}], now)
    job = FireJob("price_drop", user, "drop-1", now, ("b0-3",), {"old": "20.0", "new": "13.0"})

    [decision] = rt.firer().fire_many([job], now + 1)

    assert decision["action"] == "suppress"
    assert decision["reason"] == "its own items are unavailable (out of stock or withdrawn)"
    assert "b0-3" not in [c["item_id"] for c in decision["candidates"]]
    assert gateways.accepted("fcm") == []


def test_reasons_name_the_items_title_and_what_the_shopper_did_never_an_id(
    recording_shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, _ = recording_shop
    user = shopper(rt, gateways, "why")
    now = time.time()
    ingest.track(
        rt,
        [
            {"event_id": "v", "user_id": user, "type": "view", "item_id": "b1-4", "ts": now - 9},
            {
                "event_id": "c",
                "user_id": user,
                "type": "add_to_cart",
                "item_id": "b1-5",
                "ts": now - 8,
            },
        ],
        now,
        "track_batch",
        "t",
    )
    mid = fire_post_purchase(rt, user, "b0-1", now)
    [decision] = [d for d in rt.audit.decisions(user) if d["message_id"] == mid]
    reasons = [c["reason"] for c in decision["candidates"]]

    assert reasons and all("b0-" not in r and "b1-" not in r for r in reasons)
    # the post-purchase items are the bought item's neighbours (block 0)
    assert "because you bought Item 1 of block 0" in reasons


def test_a_shopper_the_index_does_not_know_gets_what_is_trending_now(
    recording_shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, _ = recording_shop
    now = time.time()
    new_items = [
        {"item_id": i, "title": f"New {i}", "category": "new", "price": 5.0, "stock": 9,
         "url": f"https://shop.example/p/{i}"}
        for i in ("hot-1", "new-1")
    ]  # fmt: skip
    ingest.upsert_items(rt, new_items, now)
    buys = [  # other shoppers buying an item the index has never seen
        {"event_id": f"h{n}", "user_id": f"other{n}", "type": "purchase", "item_id": "hot-1",
         "ts": now - 60}
        for n in range(5)
    ]  # fmt: skip
    ingest.track(rt, buys, now, "track_batch", "t")
    user = shopper(rt, gateways, "cold")

    mid = fire_post_purchase(rt, user, "new-1", now)  # unknown to the index too
    [decision] = [d for d in rt.audit.decisions(user) if d["message_id"] == mid]

    offered = {c["item_id"]: c["reason"] for c in decision["candidates"]}
    assert offered.get("hot-1") == "popular right now"


def test_a_price_drop_whose_item_sells_out_before_the_send_is_held(
    recording_shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    rt, _ = recording_shop
    user = shopper(rt, gateways, "gone")
    now = time.time()
    job = FireJob("price_drop", user, "drop-2", now, ("b0-4",), {"old": "20.0", "new": "13.0"})
    [decision] = rt.firer().fire_many([job], now)
    assert decision["action"] == "queued"
    ingest.upsert_items(rt, [{"item_id": "b0-4", "stock": 0}], now + 1)

    [outcome] = rt.sender().deliver_many([DeliveryRequest(decision["message_id"])], now + 2)

    assert outcome == {"action": "suppressed", "reason": "its item is out of stock"}
    assert gateways.accepted("fcm") == []


def test_a_holdout_message_is_checked_and_capped_as_a_sent_one_then_held_before_the_gateway(
    recording_shop: tuple[Runtime, list[Any]], gateways: Gateways
) -> None:
    """The holdout cell is counted where the treated one is: after the send-time checks
    and the cap reservation, once per message. Two orders a minute apart give a treated
    shopper one push (the second is capped by the rule's cooldown); they give a held-out
    shopper one held-out message, not two."""
    rt, _ = recording_shop
    user = next(u for u in (f"h{n}" for n in range(400)) if held_out(u))
    now = time.time()
    register(rt, user, "fcm", gateways.targets["fcm"], now)
    mids = []
    for n, at in enumerate((now, now + 60)):
        ingest.track_one(
            rt,
            {"event_id": f"o{n}", "user_id": user, "type": "purchase", "item_id": f"b{n}-1",
             "ts": at},
            at,
            "d",
        )  # fmt: skip
        job = FireJob("post_purchase", user, f"o{n}", at, (f"b{n}-1",), {})
        [decision] = rt.firer().fire_many([job], at)
        assert decision["action"] == "queued" and decision["message"]["cell"] == "holdout"
        mids.append(str(decision["message_id"]))

    first, second = (rt.sender().deliver_many([DeliveryRequest(m)], now + 61)[0] for m in mids)

    assert first == {"action": "held_out", "reason": "holdout cell"}
    assert second["action"] == "suppressed" and "cooldown" in second["reason"]
    assert [rt.outbox.state(m)["state"] for m in mids] == ["held_out", "suppressed"]
    assert gateways.accepted("fcm") == []
    stats = rt.audit.stats(["post_purchase"])["post_purchase"]
    assert (stats["held_out"], stats["delivered"]) == (1, 0)
    # its items count as pushed (no repeats) and as the holdout's (attribution)
    record = rt.outbox.get(mids[0])
    assert record is not None and record.cell == "holdout"
    bought = now + 120
    ingest.track_one(
        rt,
        {"event_id": "later", "user_id": user, "type": "purchase", "item_id": record.items[0],
         "ts": bought},
        bought,
        "d",
    )  # fmt: skip
    assert rt.audit.stats(["post_purchase"])["post_purchase"]["held_out_converted"] == 1
    assert rt.sender().deliver_many([DeliveryRequest(mids[0])], bought)[0]["action"] == "settled"
