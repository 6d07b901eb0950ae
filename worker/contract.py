"""The public task contract shared by the worker and every producer.

Task names, their default queues and the event schema version are public and versioned
(README, "Task contract"). Producers in any language send these names with JSON kwargs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

SCHEMA_VERSION: Final = 1

TRACK: Final = "pushrec.track"
TRACK_BATCH: Final = "pushrec.track_batch"
UPSERT_ITEMS: Final = "pushrec.upsert_items"
REGISTER_DEVICE: Final = "pushrec.register_device"
UNREGISTER_DEVICE: Final = "pushrec.unregister_device"
SET_PREFERENCES: Final = "pushrec.set_preferences"
FORGET_USER: Final = "pushrec.forget_user"
CHECK_COUPON: Final = "pushrec.check_coupon"
REDEEM_COUPON: Final = "pushrec.redeem_coupon"
NOOP: Final = "pushrec.noop"
# Internal tasks (pushrec sends these to itself; not for producers).
FIRE: Final = "pushrec.fire"
DELIVER: Final = "pushrec.deliver"
REBUILD_INDEX: Final = "pushrec.rebuild_index"
CAMPAIGN_FIRE: Final = "pushrec.campaign_fire"
# Jobs per internal fire task and messages per deliver task: fan-outs and batches of
# events travel in shared tasks (`{"jobs": [...]}`, `{"message_ids": [...]}`).
INTERNAL_BATCH: Final = 100

Enqueue = Callable[[str, dict[str, Any]], None]
"""Sends one of these tasks, with JSON kwargs, to its queue (`PushrecApp.enqueue`)."""


def enqueue_batched(enqueue: Enqueue, task: str, kwarg: str, entries: Sequence[Any]) -> None:
    """Send `entries` as `task` calls of up to `INTERNAL_BATCH` each, in kwarg `kwarg`."""
    for start in range(0, len(entries), INTERNAL_BATCH):
        enqueue(task, {kwarg: list(entries[start : start + INTERNAL_BATCH])})


# Which logical queue each task goes to; queue names themselves are settings.
ACTIVITY: Final = "activity"
PUSH: Final = "push"
MAINTENANCE: Final = "maintenance"

TASK_QUEUES: Final[dict[str, str]] = {
    TRACK: ACTIVITY,
    TRACK_BATCH: ACTIVITY,
    UPSERT_ITEMS: ACTIVITY,
    REGISTER_DEVICE: ACTIVITY,
    UNREGISTER_DEVICE: ACTIVITY,
    SET_PREFERENCES: ACTIVITY,
    FORGET_USER: MAINTENANCE,
    CHECK_COUPON: ACTIVITY,
    REDEEM_COUPON: ACTIVITY,
    NOOP: ACTIVITY,
    FIRE: ACTIVITY,
    DELIVER: PUSH,
    REBUILD_INDEX: MAINTENANCE,
    CAMPAIGN_FIRE: PUSH,  # a campaign's chunks, paced by the scheduler
}


def canonical_id(value: Any) -> Any:
    """A user or item id as pushrec stores it: strings stripped, integers (JSON ids often
    are) turned into strings; anything else is returned as given (and fails validation)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value.strip()
    return value


def celery_url(url: str) -> str:
    """A Redis URL as Celery and kombu spell it: they take `redis+socket:///path` for a
    unix socket where redis-py takes `unix:///path`. Other URLs pass unchanged."""
    if url.startswith("unix://"):
        return "redis+socket://" + url.removeprefix("unix://")
    return url


EVENT_TYPES: Final = (
    "view",
    "search",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
    "push_open",
    "push_click",
)
ITEM_EVENT_TYPES: Final = frozenset({"view", "add_to_cart", "remove_from_cart", "purchase"})
PUSH_EVENT_TYPES: Final = frozenset({"push_open", "push_click"})
CHANNELS: Final = ("fcm", "apns", "webpush", "webhook")
PURPOSES: Final = ("marketing", "transactional")
