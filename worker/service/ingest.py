"""What each contract task does with its JSON input, without Celery.

Every function takes the raw kwargs a task received, rejects what violates the
contract (recorded, never raised), applies the rest, and returns a JSON-able summary.
Redis errors propagate: the task wrapper retries them.
"""

from __future__ import annotations

import logging
from typing import Any

from push import fingerprint
from worker import contract
from worker.firing.reads import FiringReads
from worker.policy.jobs import FireJob, Trigger
from worker.service import checkout
from worker.service.runtime import Runtime
from worker.shoppers.catalog import ItemChange
from worker.shoppers.contact_inputs import parse_device, parse_device_removal, parse_preferences
from worker.shoppers.erasure import forget_user
from worker.shoppers.inputs import Event, InvalidInput, Item, parse_event, parse_item, parse_user_id
from worker.shoppers.segment_index import ACTIVITY
from worker.shoppers.snapshot import Shopper
from worker.shoppers.state import FollowUp, PendingMarks
from worker.store.client import StatePipeline

log = logging.getLogger(__name__)


def _split_batch(
    rt: Runtime, task: str, raw: Any, max_len: int, what: str
) -> tuple[list[Any], int]:
    """The entries of a batch to process and how many were rejected: a non-list is
    rejected whole, entries beyond `max_len` one by one (kept for replay), never dropped."""
    if not isinstance(raw, list):
        rt.rejected.record(
            task, "not_a_list", f"{what} must be a JSON array, got {type(raw).__name__}", raw
        )
        return [], 1
    for position, entry in enumerate(raw[max_len:], start=max_len):
        rt.rejected.record(
            task, "oversize_batch", f"{what}[{position}]: beyond the {max_len} per call", entry
        )
    return raw[:max_len], max(0, len(raw) - max_len)


def track(
    rt: Runtime, raw_events: list[Any], now: float, task: str, delivery_id: str
) -> dict[str, int]:
    """Validate and apply activity events; one bad event never stops the others."""
    events: list[Event] = []
    rejected = 0
    for raw in raw_events:
        try:
            events.append(parse_event(raw, rt.limits, now))
        except InvalidInput as exc:
            rt.rejected.record(task, exc.code, exc.reason, raw)
            rejected += 1

    def index_activity(shoppers: list[Shopper], pipe: StatePipeline) -> None:
        rt.segment_index.write_activity(shoppers, now, pipe)

    attribution = rt.audit.attribution(events)
    # What firing the rules due at once reads, read with the events' scripts when those
    # rules are known before (`Triggers.foreseen`): used if the events prove fresh.
    # The segment index's reads of a shopper those rules fire for are taken from them.
    foreseen, _ = _due_now(rt.triggers.foreseen(events, now), now)
    read_first = rt.firer().read_first(foreseen, now, ACTIVITY.parts) if foreseen else None
    result = rt.state.apply_events(
        events,
        now,
        delivery_id,
        FollowUp(ACTIVITY, index_activity, source=read_first),
        also_read=[attribution] if read_first is None else [attribution, read_first],
        carry_side_effects=True,  # they ride on the first round trip of the reactions
    )
    rt.metrics.add(rt.audit.credit(attribution, result.fresh))
    checkout.redeem_purchases(rt, result.fresh)
    triggers = rt.triggers.for_events(result.fresh, now)

    def react(pipe: StatePipeline, marks: PendingMarks) -> bool:
        return schedule(rt, triggers, now, pipe, delivery_id, marks, read_first)

    rt.state.react_and_confirm(result, react)
    return {"applied": result.applied, "duplicates": result.duplicates, "rejected": rejected}


_INLINE_MAX = 200  # larger fan-outs go through the delayed set, drained by the scheduler


def schedule(
    rt: Runtime,
    triggers: list[Trigger],
    now: float,
    pipe: StatePipeline,
    delivery_id: str = "",
    marks: PendingMarks | None = None,
    read: FiringReads | None = None,
) -> bool:
    """React to triggers: fire the due ones here and now (a queue hop would cost a task
    and its wait; firing is idempotent by message id), park the rest, and big fan-outs,
    in the delayed set until due (in `pipe`, which the caller runs, and which may hold
    writes of the caller's that must land before it goes on: the firing sends them with
    a round trip of its own, `Firer.fire_many`'s `ahead`). `delivery_id`: the task doing
    it, which delivers what it fires where the worker sends inline; `marks`: the events'
    pending marks, which such a delivery clears with its settling; `read`: what firing
    the due ones reads, if read already (`Firer.read_first`). Returns whether `pipe`
    still holds work that must land before the marks are cleared, the caller's or
    parked jobs (`StateStore.react_and_confirm`)."""
    due_now, later = _due_now(triggers, now)
    unsent = len(pipe) > 0 or bool(later)
    for trigger in later:
        rt.delayed.schedule(trigger.job(), trigger.due, pipe=pipe)
    rt.metrics.add({"rules.triggered": len(triggers)}, pipe=pipe)  # with the first trip
    if due_now:
        rt.firer().fire_many(due_now, now, delivery_id, ahead=pipe, marks=marks, read=read)
        return False
    return unsent


def _due_now(triggers: list[Trigger], now: float) -> tuple[list[FireJob], list[Trigger]]:
    """The jobs to fire at once, and the triggers to park until due: those due later,
    and every one of a fan-out too big to fire inline."""
    inline = len(triggers) <= _INLINE_MAX
    due_now = [t.fire_job() for t in triggers if inline and t.due <= now]
    later = [t for t in triggers if not (inline and t.due <= now)]
    return due_now, later


def track_one(rt: Runtime, event: Any, now: float, delivery_id: str) -> dict[str, int]:
    return track(rt, [event], now, contract.TRACK, delivery_id)


def track_batch(rt: Runtime, events: Any, now: float, delivery_id: str) -> dict[str, int]:
    entries, overflow = _split_batch(
        rt, contract.TRACK_BATCH, events, rt.limits.batch_max_events, "events"
    )
    summary = track(rt, entries, now, contract.TRACK_BATCH, delivery_id)
    summary["rejected"] += overflow
    return summary


def upsert_items(
    rt: Runtime, items: Any, now: float, delivery_id: str = ""
) -> tuple[dict[str, int], list[ItemChange]]:
    entries, overflow = _split_batch(
        rt, contract.UPSERT_ITEMS, items, rt.limits.batch_max_items, "items"
    )
    valid: list[Item] = []
    for raw in entries:
        try:
            valid.append(parse_item(raw, rt.limits, now))
        except InvalidInput as exc:
            rt.rejected.record(contract.UPSERT_ITEMS, exc.code, exc.reason, raw)
    upserted = rt.catalog.upsert(valid, now, delivery_id)
    changes = upserted.changes
    if upserted.live and rt.has_index:
        rt.index.catch_up()  # this process serves the change at once; others: live_items.py
    pipe = rt.redis.pipeline(transaction=False)
    schedule(rt, rt.triggers.for_item_changes(changes, now), now, pipe, delivery_id)
    pipe.execute()
    return {
        "upserted": len(valid),
        "rejected": overflow + len(entries) - len(valid),
        "changes": len(changes),
    }, changes


def register_device(rt: Runtime, payload: dict[str, Any], now: float) -> dict[str, Any]:
    try:
        reg = parse_device(payload, guard=rt.destinations)
    except InvalidInput as exc:
        rt.rejected.record(contract.REGISTER_DEVICE, exc.code, exc.reason, payload)
        return {"rejected": exc.reason}
    outcome = rt.contacts.register(reg, now)
    rt.segment_index.refresh_devices(
        (str(u) for u in (reg.user_id, outcome.moved_from) if u is not None), now
    )
    rt.metrics.add({"devices.registered": 1, "devices.moved": int(bool(outcome.moved_from))})
    return {"device_id": outcome.device_id, "moved": outcome.moved_from is not None}


def unregister_device(rt: Runtime, payload: dict[str, Any], now: float) -> dict[str, Any]:
    try:
        removal = parse_device_removal(payload)
    except InvalidInput as exc:
        rt.rejected.record(contract.UNREGISTER_DEVICE, exc.code, exc.reason, payload)
        return {"rejected": exc.reason}
    removed = rt.contacts.unregister(removal)
    if removed:
        rt.segment_index.refresh_devices([removal.user_id], now)
    rt.metrics.add({"devices.unregistered": int(removed)})
    return {"removed": removed}


def set_preferences(rt: Runtime, payload: dict[str, Any], now: float) -> dict[str, Any]:
    try:
        prefs = parse_preferences(payload)
    except InvalidInput as exc:
        rt.rejected.record(contract.SET_PREFERENCES, exc.code, exc.reason, payload)
        return {"rejected": exc.reason}
    changed = rt.contacts.set_preferences(prefs, now)
    rt.metrics.add({"preferences.updated": 1})
    return {"changed": changed}


def erase_user(rt: Runtime, user_id: Any) -> dict[str, object]:
    """Erase a shopper (`erasure.forget_user`); returns counts only, never the id: the
    result backend keeps what this returns."""
    try:
        uid = parse_user_id(user_id)
    except InvalidInput as exc:
        rt.rejected.record(contract.FORGET_USER, exc.code, exc.reason, {"user_id": user_id})
        return {"rejected": exc.reason}
    report = forget_user(rt.redis, rt.keys, rt.contacts, rt.delayed, uid)
    rt.metrics.add({"users.forgotten": 1})
    log.info(
        "forgot user %s: %d keys, %d messages, %s log entries",
        fingerprint(uid),
        report.keys_removed,
        report.messages_removed,
        report.log_entries_removed,
    )
    return report.as_dict()
