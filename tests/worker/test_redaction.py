"""The one redaction of stream payloads, and every writer of the rejected stream using it."""

from __future__ import annotations

import json
from typing import Any

from worker import contract
from worker.service import ingest, tasks
from worker.service.app import create_app
from worker.service.runtime import Runtime
from worker.settings import Settings

ENDPOINT = "https://fcm.googleapis.com/fcm/send/endpoint-secret"
SUBSCRIPTION = {
    "endpoint": ENDPOINT,
    "keys": {"p256dh": "p256dh-secret", "auth": "auth-secret"},
    "expirationTime": None,
}
SECRETS = ("endpoint-secret", "p256dh-secret", "auth-secret", "token-secret")


def _kept(rt: Runtime) -> str:
    return json.dumps(rt.rejected.recent(50), ensure_ascii=False)


def test_redact_replaces_secrets_at_any_depth_and_keeps_what_a_replay_needs() -> None:
    from worker.store.redaction import redact, shoppers_in

    event = {"event_id": "e1", "user_id": 17850, "type": "view", "item_id": "i1"}
    payload: dict[str, Any] = {
        "task_id": "t1",
        "kwargs": {
            "user_id": "Zoë",
            "channel": "webpush",
            "subscription": SUBSCRIPTION,
            "devices": [{"token": "token-secret"}],
            "events": [event],
        },
    }

    kept = redact(payload)

    text = json.dumps(kept)
    assert not [s for s in SECRETS if s in text]
    assert kept["kwargs"]["subscription"]["endpoint"].startswith("https://fcm.googleapis.com/")
    assert kept["kwargs"]["events"] == [event]  # the event content, for replay
    assert payload["kwargs"]["subscription"] is SUBSCRIPTION  # the input is not modified
    assert redact({"subscription": json.dumps(SUBSCRIPTION)})["subscription"].startswith("h:")
    assert shoppers_in(payload) == ["Zoë", "17850"]


def test_stream_fields_index_the_shoppers_before_the_payload_is_cut() -> None:
    from worker.store.redaction import PAYLOAD_MAX_CHARS, names_shopper, stream_fields

    small = stream_fields({"events": [{"user_id": "u1", "props": {"x": "y" * 10_000}}]})
    assert json.loads(small["payload"])["events"][0]["user_id"] == "u1"  # kept whole
    assert "truncated" not in small
    size = PAYLOAD_MAX_CHARS // 100
    events = [{"user_id": f"u{n}", "props": {"x": "y" * size}} for n in range(200)]
    fields = stream_fields({"events": events})
    assert "u199" not in fields["payload"]  # an oversize call is cut, and says so
    assert int(fields["truncated"]) > PAYLOAD_MAX_CHARS
    assert names_shopper(fields, "u199") and not names_shopper(fields, "u200")
    legacy = {"payload": json.dumps({"event": {"user_id": 7}}, ensure_ascii=True)}
    assert names_shopper(legacy, "7")  # written before the `users` field


def test_per_entry_rejections_keep_no_device_secret(runtime: Runtime) -> None:
    ingest.register_device(
        runtime, {"user_id": "u", "channel": "apns", "token": "token-secret"}, 0.0
    )
    ingest.register_device(
        runtime,
        {"user_id": "u", "channel": "webpush", "subscription": {**SUBSCRIPTION, "x": 1}},
        0.0,
    )
    ingest.unregister_device(
        runtime,
        {"user_id": "u", "channel": "pager", "endpoint": "https://push.example/endpoint-secret"},
        0.0,
    )
    assert len(runtime.rejected.recent(50)) == 3
    assert not [s for s in SECRETS if s in _kept(runtime)]


def test_a_bad_call_and_a_task_that_failed_keep_no_device_secret(
    settings: Settings, runtime: Runtime
) -> None:
    app = create_app(settings)
    try:
        app.tasks[contract.UNREGISTER_DEVICE].apply(
            kwargs={"user_id": "u", "channel": "webpush", "endpoint": ENDPOINT, "extra": 1}
        )
        task = app.tasks[contract.REGISTER_DEVICE]
        kwargs = {"user_id": "u", "channel": "webpush", "subscription": SUBSCRIPTION}
        task.push_request(id="t-bug", kwargs=kwargs)
        try:
            tasks._keep_failed(task, RuntimeError("a bug"))
        finally:
            task.pop_request()
    finally:
        app.close_runtime()
    codes = sorted(e["code"] for e in runtime.rejected.recent(50))
    assert codes == ["bad_call", "task_error"]
    assert not [s for s in SECRETS if s in _kept(runtime)]
    assert all(json.loads(e["users"]) == ["u"] for e in runtime.rejected.recent(50))
