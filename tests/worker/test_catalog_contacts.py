"""Catalog history, devices, preferences and erasure on a real Redis."""

from __future__ import annotations

import pytest

from tests.clock import RUN_NOW
from worker import contract
from worker.service import ingest
from worker.service.runtime import Runtime
from worker.service.userview import user_view
from worker.settings import Settings
from worker.shoppers import catalog
from worker.shoppers.catalog import ItemChange

NOW = RUN_NOW  # applied events reach the trending buckets, which Redis expires


def test_price_and_stock_changes_are_kept_with_their_time(runtime: Runtime) -> None:
    ingest.upsert_items(
        runtime,
        [{"item_id": "i1", "title": "Mug", "price": 10.0, "stock": 0, "ts": NOW - 300}],
        NOW,
    )
    summary, changes = ingest.upsert_items(
        runtime, [{"item_id": "i1", "price": 7.5, "stock": 4, "ts": NOW - 100}], NOW
    )
    assert summary == {"upserted": 1, "rejected": 0, "changes": 2}
    assert changes == [
        ItemChange("i1", "price", 10.0, 7.5, NOW - 100),
        ItemChange("i1", "stock", 0.0, 4.0, NOW - 100),
    ]
    assert runtime.catalog.get("i1")["title"] == "Mug"  # untouched by the partial update
    assert [c["field"] for c in runtime.catalog.changes("i1")] == ["stock", "price"]


def test_an_older_upsert_does_not_override_a_newer_one(runtime: Runtime) -> None:
    ingest.upsert_items(runtime, [{"item_id": "i1", "price": 5.0, "ts": NOW - 10}], NOW)
    _, changes = ingest.upsert_items(
        runtime, [{"item_id": "i1", "price": 9.0, "ts": NOW - 20}], NOW
    )
    assert changes == []
    assert runtime.catalog.get("i1")["price"] == "5.0"
    assert runtime.metrics.snapshot()["items.stale"] == 1


def test_bad_items_are_rejected_and_good_ones_kept(runtime: Runtime) -> None:
    summary, _ = ingest.upsert_items(
        runtime,
        [{"item_id": "ok", "price": 1.0}, {"price": 2.0}, {"item_id": "x", "stock": "many"}],
        NOW,
    )
    assert summary == {"upserted": 1, "rejected": 2, "changes": 0}
    stored = runtime.catalog.get("ok")
    assert (stored["price"], float(stored["updated_at"])) == ("1.0", NOW)
    assert runtime.catalog.get("x") == {}


def test_a_cached_entry_is_never_older_than_the_last_upsert_of_any_process(
    settings: Settings,
) -> None:
    """Two runtimes stand for two worker processes, each with its catalog cache."""
    reader, writer = Runtime.open(settings), Runtime.open(settings)
    try:
        ingest.upsert_items(writer, [{"item_id": "i1", "price": 10.0, "stock": 3}], NOW)
        assert reader.catalog.get_many(["i1", "nope"]) == {"i1": writer.catalog.get("i1")}
        commands = _commands(reader)
        reader.catalog.get_many(["i1"])
        assert _commands(reader) - commands == 3  # the change feed only (and INFO)

        ingest.upsert_items(writer, [{"item_id": "i1", "price": 7.5, "ts": NOW + 1}], NOW)
        ingest.upsert_items(writer, [{"item_id": "new", "title": "New"}], NOW)
        got = reader.catalog.get_many(["i1", "new"])
        assert (got["i1"]["price"], got["i1"]["stock"], got["new"]["title"]) == ("7.5", "3", "New")
    finally:
        reader.close()
        writer.close()


def test_a_read_after_a_feed_read_of_the_callers_own_is_as_fresh_as_that_read(
    settings: Settings,
) -> None:
    """Firing reads the change feed with its shoppers (`queue_feed`): a read of cached
    entries after it costs no command, and still sees every upsert marked before it."""
    reader, writer = Runtime.open(settings), Runtime.open(settings)

    def read_feed() -> None:
        pipe = reader.redis.pipeline(transaction=False)
        since = reader.catalog.queue_feed(pipe)
        reader.catalog.apply_feed(since, *pipe.execute())

    try:
        ingest.upsert_items(writer, [{"item_id": "i1", "price": 10.0, "stock": 3}], NOW)
        reader.catalog.get_many(["i1"])
        read_feed()
        commands = _commands(reader)
        assert reader.catalog.get_many(["i1"], feed_read=True)["i1"]["price"] == "10.0"
        assert _commands(reader) - commands == 1  # INFO only

        ingest.upsert_items(writer, [{"item_id": "i1", "stock": 0, "ts": NOW + 1}], NOW)
        read_feed()
        assert reader.catalog.get_many(["i1"], feed_read=True)["i1"]["stock"] == "0"

        # Redis lost the feed: the caller's feed read distrusts the whole cache too
        keys = writer.keys
        writer.redis.delete(keys.catalog_seq, keys.catalog_changed, keys.item("i1").item)
        ingest.upsert_items(writer, [{"item_id": "i1", "price": 5.0}], NOW)
        read_feed()
        assert reader.catalog.get_many(["i1"], feed_read=True)["i1"]["price"] == "5.0"
    finally:
        reader.close()
        writer.close()


def test_a_catalog_cache_trusts_nothing_once_redis_lost_the_feed(settings: Settings) -> None:
    reader, writer = Runtime.open(settings), Runtime.open(settings)
    try:
        for price in (10.0, 11.0, 12.0):
            ingest.upsert_items(writer, [{"item_id": "i1", "price": price}], NOW)
        assert reader.catalog.get_many(["i1"])["i1"]["price"] == "12.0"
        # a restart without persistence: the catalog and its feed are gone, then reloaded
        keys = writer.keys
        writer.redis.delete(keys.catalog_seq, keys.catalog_changed, keys.item("i1").item)
        ingest.upsert_items(writer, [{"item_id": "i1", "price": 5.0}], NOW)
        assert reader.catalog.get_many(["i1"])["i1"]["price"] == "5.0"
    finally:
        reader.close()
        writer.close()


def test_the_catalog_cache_stays_bounded(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog, "_CACHE_MAX", 3)
    items = [{"item_id": f"i{n}", "price": float(n)} for n in range(5)]
    ingest.upsert_items(runtime, items, NOW)
    got = runtime.catalog.get_many([f"i{n}" for n in range(5)])
    assert {i: f["price"] for i, f in got.items()} == {f"i{n}": f"{n}.0" for n in range(5)}
    assert len(runtime.catalog._cache) <= 3


def _commands(rt: Runtime) -> int:
    return int(rt.redis.info("stats")["total_commands_processed"])  # type: ignore[index]


def test_a_token_registered_by_another_user_moves_to_them(runtime: Runtime) -> None:
    first = ingest.register_device(
        runtime, {"user_id": "a", "channel": "fcm", "token": "tok-1"}, NOW
    )
    again = ingest.register_device(
        runtime, {"user_id": "a", "channel": "fcm", "token": "tok-1"}, NOW
    )
    assert first == again == {"device_id": first["device_id"], "moved": False}
    moved = ingest.register_device(
        runtime, {"user_id": "b", "channel": "fcm", "token": "tok-1"}, NOW
    )
    assert moved["moved"] is True
    assert runtime.contacts.devices("a") == {}
    assert list(runtime.contacts.devices("b")) == [first["device_id"]]


def test_device_views_never_show_the_token(runtime: Runtime) -> None:
    ingest.register_device(
        runtime, {"user_id": "a", "channel": "fcm", "token": "secret-token"}, NOW
    )
    shown = user_view(runtime.redis, runtime.keys, "a", NOW)
    assert "secret-token" not in str(shown)
    bad = ingest.register_device(
        runtime, {"user_id": "a", "channel": "apns", "token": "other-secret"}, NOW
    )
    assert "hex" in bad["rejected"]
    assert "other-secret" not in str(runtime.rejected.recent(5))


P256DH = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
AUTH = "BTBZMqHH6r4Tts7J_aSIgg"


def _webpush(endpoint: str) -> dict[str, object]:
    keys = {"p256dh": P256DH, "auth": AUTH}
    return {
        "user_id": "a",
        "channel": "webpush",
        "subscription": {"endpoint": endpoint, "keys": keys},
    }


@pytest.mark.parametrize(
    "payload",
    [
        _webpush("https://127.0.0.1:8443/push/abc"),  # the case
        _webpush("https://[::ffff:10.0.0.1]/push/abc"),
        _webpush("http://fcm.googleapis.com/fcm/send/abc"),
        {"user_id": "a", "channel": "webhook", "token": "https://2130706433/hook"},
        {"user_id": "a", "channel": "webhook", "token": "https://169.254.169.254/latest"},
        {"user_id": "a", "channel": "webhook", "token": "https://hooks.example@localhost/x"},
    ],
)
def test_internal_destinations_are_rejected_recorded_and_counted(
    runtime: Runtime, payload: dict[str, object]
) -> None:
    answer = ingest.register_device(runtime, payload, NOW)
    assert "rejected" in answer
    [kept] = runtime.rejected.recent(1)
    assert kept["code"] == "unsafe_destination"
    counted = runtime.metrics.snapshot()
    assert counted[f"{contract.REGISTER_DEVICE}.rejected.unsafe_destination"] == 1
    assert runtime.contacts.devices("a") == {}


def test_public_destinations_are_registered(runtime: Runtime) -> None:
    ingest.register_device(runtime, _webpush("https://fcm.googleapis.com/fcm/send/abc"), NOW)
    webhook = {"user_id": "a", "channel": "webhook", "token": "https://hooks.shop.example/in"}
    ingest.register_device(runtime, webhook, NOW)
    assert len(runtime.contacts.devices("a")) == 2
    assert runtime.rejected.recent(1) == []


def test_allowlisted_hosts_may_register_http_and_internal_urls(settings: Settings) -> None:
    rt = Runtime.open(settings.model_copy(update={"destination_allowed_hosts": ["127.0.0.1"]}))
    try:
        ingest.register_device(rt, _webpush("http://127.0.0.1:8080/push/abc"), NOW)
        assert len(rt.contacts.devices("a")) == 1
    finally:
        rt.close()


def test_unregister_removes_the_device(runtime: Runtime) -> None:
    ingest.register_device(
        runtime, {"user_id": "a", "channel": "webhook", "token": "https://h.example/x"}, NOW
    )
    assert ingest.unregister_device(
        runtime, {"user_id": "a", "channel": "webhook", "token": "https://h.example/x"}, NOW
    ) == {"removed": True}
    assert runtime.contacts.devices("a") == {}


def test_a_late_consent_grant_does_not_override_a_newer_withdrawal(runtime: Runtime) -> None:
    ingest.set_preferences(
        runtime, {"user_id": "a", "consent": {"marketing": {"*": False}}, "ts": NOW - 10}, NOW
    )
    ingest.set_preferences(
        runtime,
        {
            "user_id": "a",
            "consent": {"marketing": {"*": True}},
            "timezone": "Asia/Tokyo",
            "ts": NOW - 60,
        },
        NOW,
    )
    assert runtime.contacts.preferences("a") == {
        "consent:marketing:*": "0",
        "timezone": "Asia/Tokyo",
    }
    ingest.set_preferences(
        runtime, {"user_id": "a", "quiet_hours": {"start": "22:00", "end": "08:00"}}, NOW
    )
    assert runtime.contacts.preferences("a")["quiet_hours"] == "22:00-08:00"
    ingest.set_preferences(runtime, {"user_id": "a", "quiet_hours": None}, NOW + 1)
    assert "quiet_hours" not in runtime.contacts.preferences("a")


def test_forget_user_erases_every_key_and_log_entry_of_that_shopper(runtime: Runtime) -> None:
    ingest.track_batch(
        runtime,
        [
            {
                "event_id": "e1",
                "user_id": "gone",
                "type": "add_to_cart",
                "item_id": "i",
                "ts": NOW - 5,
            },
            {"event_id": "e2", "user_id": "stays", "type": "view", "item_id": "i", "ts": NOW - 5},
            {"event_id": "e3", "user_id": "gone", "type": "teleport", "ts": NOW - 5},
        ],
        NOW,
        "d1",
    )
    ingest.register_device(runtime, {"user_id": "gone", "channel": "fcm", "token": "t"}, NOW)
    ingest.set_preferences(runtime, {"user_id": "gone", "timezone": "UTC"}, NOW)

    report = ingest.erase_user(runtime, "gone")
    assert report["log_entries_removed"] == {"interactions": 1, "rejected": 1, "dead_letters": 0}
    assert report["devices_released"] == report["interest_entries_removed"] == 1
    # profile, recent, cart x2, seen, interests, history x2, devices, prefs
    assert report["keys_removed"] == 10
    leftover = [k for k in runtime.redis.scan_iter(match=f"{runtime.keys.prefix}*") if "gone" in k]
    assert leftover == []
    assert user_view(runtime.redis, runtime.keys, "stays", NOW)["exists"]
    assert runtime.redis.zrange(runtime.keys.interested("i"), 0, -1) == ["stays"]
    assert ingest.erase_user(runtime, "gone")["keys_removed"] == 0


def test_an_upsert_without_ts_redelivered_later_reports_its_changes_again(
    runtime: Runtime,
) -> None:
    """An item sent without `ts` takes the task's clock, which its retry or redelivery does
    not repeat: the changes are found again by the task's id, with the first try's time."""
    ingest.upsert_items(runtime, [{"item_id": "i2", "price": 10.0}], NOW - 60, "task-0")
    _, changes = ingest.upsert_items(runtime, [{"item_id": "i2", "price": 8.0}], NOW, "task-1")
    _, again = ingest.upsert_items(runtime, [{"item_id": "i2", "price": 8.0}], NOW + 5, "task-1")
    assert changes == again == [ItemChange("i2", "price", 10.0, 8.0, NOW)]
    _, other = ingest.upsert_items(runtime, [{"item_id": "i2", "price": 8.0}], NOW + 9, "task-2")
    assert other == []  # another task that changes nothing reports nothing
    assert len(runtime.catalog.changes("i2")) == 1  # recorded once


def test_a_redelivered_upsert_reports_its_changes_again_for_the_fan_out(runtime: Runtime) -> None:
    ts = NOW - 0.123456  # fractional epoch seconds survive the round trip exactly
    ingest.upsert_items(runtime, [{"item_id": "i1", "price": 10.0, "ts": NOW - 60}], NOW)
    _, changes = ingest.upsert_items(runtime, [{"item_id": "i1", "price": 8.0, "ts": ts}], NOW)
    _, again = ingest.upsert_items(runtime, [{"item_id": "i1", "price": 8.0, "ts": ts}], NOW)
    assert changes == again == [ItemChange("i1", "price", 10.0, 8.0, ts)]
    assert len(runtime.catalog.changes("i1")) == 1  # recorded once
