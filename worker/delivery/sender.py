"""Delivery: send queued messages to every active device of their shoppers.

`MessageSender.deliver_many` is what the `pushrec.deliver` task does with its messages (up to
100: the messages of a batch of events or a fan-out travel together), and what a task that
fired them does at once on a worker that also consumes the push queue
(`Runtime.deliver_queued`). At send time it
checks again what may have changed since the rule fired: consent withdrawn, items bought
or sold out, its items pushed by another message since (no repeats), a cap reached by
another message (the caps are recorded atomically here),
quiet hours begun (the message is deferred to their end: parked in the delayed set,
recorded, counted), a device now registered to another shopper (skipped, taken off this
shopper's list, recorded). A holdout cell's message goes through all of this, caps
reserved, and stops where a treated one would be sent: settled `held_out`, its items noted
as a sent message's are (no repeats, attribution), so the two cells are counted at one
point. Then it sends to each active, consented device the shopper
owns, in the rule's channel order, through `push/`,
under the circuit breaker, rate limit and retry policy whose state lives in Redis; the
sends of a batch run concurrently. Each device's result is acted on: delivered; retry
later (parked in the delayed set, never held by a worker); device invalid (deactivated,
for APNs only if not re-registered since the gateway's timestamp); failed. Every attempt
is recorded on the message (`settle.py`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from push import DeliveryResult, Device, Message, Purpose, WebPushSubscription
from push.messages import Channel, Priority
from worker.delivery.outbox import SETTLED, MessageRecord, Outbox
from worker.delivery.push_runtime import PushRuntime
from worker.delivery.requests import (
    DeliveryOutcome,
    DeliveryRequest,
    FiringWrites,
    FreshMessage,
)
from worker.delivery.settle import MessageDelivery, Settler
from worker.policy.contact import ContactPolicy
from worker.policy.kinds import KINDS
from worker.rules import enabled_rules
from worker.settings import Settings
from worker.shoppers.audit import Audit
from worker.shoppers.contacts import Contacts
from worker.shoppers.segment_index import SegmentIndex
from worker.shoppers.snapshot import DeviceRecord, Part, Shopper, ShopperReads
from worker.shoppers.state import PendingMarks
from worker.store.client import StatePipeline, StateRedis
from worker.store.delayed import DelayedJobs
from worker.store.errors import describe, stack
from worker.store.keys import Keys
from worker.store.metrics import Metrics
from worker.store.scripts import Scripts

log = logging.getLogger(__name__)


_READ_PARTS: tuple[Part, ...] = ("devices", "preferences", "purchases")


def _reads_of(record: MessageRecord) -> ShopperReads:
    """The send-time re-check's reads of a message's shopper: devices, preferences, and
    what they bought since the message was made."""
    return ShopperReads.of(*_READ_PARTS, since=record.created_at)


def _push_device(record: DeviceRecord) -> Device:
    channel = Channel(record["channel"])
    if channel is Channel.WEBPUSH:
        return Device(channel, subscription=WebPushSubscription.from_json(record["subscription"]))
    return Device(channel, token=record["token"])


class Reread(NamedTuple):
    """What the send-time re-check reads of a message's shopper: the shopper (devices,
    preferences, purchases since the message was made), each item's stock, the items
    pushed to them since, and the owners read of their likely devices."""

    shopper: Shopper
    stock: list[str | None]
    pushed: set[str]
    owners: dict[str, str | None]


# Reads a caller's round trip made for the re-check of fresh messages: from its replies,
# each message's `Reread`, by id (`MessageSender.queue_recheck`).
ReadAhead = Callable[[], dict[str, Reread]]


class MessageSender:
    """Delivers queued messages (the outbox) to their shoppers' devices; push's `Sender` is
    the one-message seam it sends through."""

    def __init__(
        self,
        client: StateRedis,
        keys: Keys,
        settings: Settings,
        contacts: Contacts,
        policy: ContactPolicy,
        outbox: Outbox,
        audit: Audit,
        delayed: DelayedJobs,
        push: PushRuntime,
        metrics: Metrics,
        segment_index: SegmentIndex,
        scripts: Scripts,
    ) -> None:
        self._client = client
        self._keys = keys
        self._rules = enabled_rules(settings.all_rules)
        self._contacts = contacts
        self._policy = policy
        self._outbox = outbox
        self._push = push
        self._settler = Settler(
            client, contacts, policy, outbox, audit, delayed, metrics, segment_index, scripts
        )

    def deliver_many(
        self,
        requests: Sequence[DeliveryRequest],
        now: float,
        owner: str = "",
        fresh: Mapping[str, FreshMessage] | None = None,
        read_ahead: ReadAhead | None = None,
        marks: PendingMarks | None = None,
        writes: FiringWrites | None = None,
    ) -> list[DeliveryOutcome]:
        """Deliver each request; one round trip per stage for the whole batch (load,
        re-check, reserve caps and claim devices, settle) and every send concurrent over
        the thread's gateway connections. `owner` (the task id) claims each device send
        atomically. `fresh`: messages the caller has just stored (queued, so not loaded
        again), by id; `read_ahead`: their re-check, read in a round trip of the caller's
        (`queue_recheck`); `writes`: the writes of the firing that queued them, sent
        with the caps and claims (a failure before leaves them unsent: the caller's to
        `land`); `marks`: the pending marks of the events whose firing queued these
        messages (its writes have landed by then), cleared with the settling's writes."""
        owner = owner or f"local-{id(self):x}"
        results: dict[str, DeliveryOutcome] = {}
        live: list[MessageDelivery] = []
        first: dict[str, DeliveryRequest] = {}
        for r in requests:  # a message named twice is delivered once, as first asked
            first.setdefault(r.message_id, r)
        unique = list(first.values())
        known = fresh or {}
        rest = iter(
            self._outbox.load_many([r.message_id for r in unique if r.message_id not in known])
        )
        loaded = [
            (known[r.message_id].record, {"state": "queued"})
            if r.message_id in known
            else next(rest)
            for r in unique
        ]
        missing: list[str] = []
        for request, (record, state) in zip(unique, loaded, strict=True):
            mid = request.message_id
            if record is None:
                results[mid] = {"action": "missing", "message_id": mid}
                missing.append(mid)
            elif state.get("state") in SETTLED and request.only is None:
                results[mid] = {"action": "settled", "message_id": mid}
            else:
                rule = self._rules.get(record.rule)
                live.append(MessageDelivery(request, record, state, rule))
        if missing:  # expired, or its shopper erased: the sweeper must not resend it
            unqueue = self._client.pipeline(transaction=False)
            self._outbox.unqueue(missing, unqueue)
            unqueue.execute()

        held, first_tries = self._recheck(live, now, known, read_ahead() if read_ahead else {})
        live = [d for d in live if id(d) not in {id(h) for h in held}]
        capped = self._reserve_and_claim(live, first_tries, owner, now, writes)
        held += capped
        live = [d for d in live if id(d) not in {id(c) for c in capped}]
        for d in live:
            if d.record.cell == "holdout":  # as far as a treated message goes, not further
                d.result = {"action": "held_out", "reason": "holdout cell"}
                held.append(d)
        live = [d for d in live if d.record.cell != "holdout"]
        messages = [(m, d.request.attempt) for d in live for _, m in d.sends]
        outcomes = iter(self._push.run(self._send_all(messages)) if messages else [])
        per_delivery = [[next(outcomes) for _ in d.sends] for d in live]
        self._settler.settle(live, per_delivery, held, now, self._push.timed.take(), marks)
        for d in [*live, *held]:
            results[d.record.id] = d.result
        return [results[r.message_id] for r in requests]

    async def _send_all(self, messages: list[tuple[Message, int]]) -> list[DeliveryResult]:
        send = self._push.deliverer.send
        if len(messages) == 1:  # in this task: a task of its own costs turns of the loop
            message, attempt = messages[0]
            return [await send(message, attempt)]
        return list(await asyncio.gather(*(send(m, attempt) for m, attempt in messages)))

    def queue_recheck(
        self, fresh: Mapping[str, FreshMessage], pipe: StatePipeline
    ) -> Callable[[Iterator[Any]], ReadAhead]:
        """Queue the send-time re-check of messages about to be stored into a round trip
        the caller makes anyway (a firing's create: the reads come after it, and read
        nothing the firing's writes after it change). Give what it returns the replies
        from where these begin, and hand the result to `deliver_many` as `read_ahead`;
        the replies are parsed there."""
        queued = [(m.record, m.devices) for m in fresh.values()]
        for record, devices in queued:
            self._queue_reread(record, devices, pipe)

        def take(replies: Iterator[Any]) -> ReadAhead:
            def read() -> dict[str, Reread]:
                got = list(replies)
                for reply in got:  # raised as a re-check of its own would raise it
                    if isinstance(reply, Exception):
                        raise reply
                ordered = iter(got)
                return {r.id: self._parse_reread(r, d, ordered) for r, d in queued}

            return read

        return take

    def _queue_reread(
        self, record: MessageRecord, devices: Sequence[str], pipe: StatePipeline
    ) -> None:
        _reads_of(record).queue(pipe, self._keys, record.user_id)
        for item in record.items:
            pipe.hget(self._keys.item(item).item, "stock")
        self._policy.queue_pushed(pipe, record.user_id, record.created_at)
        self._contacts.owners(list(devices), pipe)

    def _parse_reread(
        self, record: MessageRecord, devices: Sequence[str], replies: Iterator[Any]
    ) -> Reread:
        return Reread(
            _reads_of(record).parse(record.user_id, replies),
            [next(replies) for _ in record.items],
            set(next(replies)),
            {device_id: next(replies) for device_id in devices},
        )

    def _recheck(
        self,
        live: Sequence[MessageDelivery],
        now: float,
        fresh: Mapping[str, FreshMessage],
        read_ahead: Mapping[str, Reread],
    ) -> tuple[list[MessageDelivery], list[MessageDelivery]]:
        """Set each delivery's target devices, or its result if the message must not go
        out now (returned): suppressed (rule disabled, consent withdrawn, items bought or
        sold out or pushed by another message since) or deferred (the shopper's quiet
        hours, as they are now, hold it); and the first tries, whose caps are reserved with
        the device claims (`_reserve_and_claim`). `fresh`: messages just stored, whose
        devices' owners are read with the rest; `read_ahead`: the reads of messages the
        caller's round trip made."""
        now_read = [d for d in live if d.record.id not in read_ahead]
        likely = {
            id(d): fresh[d.record.id].devices if d.record.id in fresh else () for d in now_read
        }
        pipe = self._client.pipeline(transaction=False)  # every other read, one round trip
        for d in now_read:
            self._queue_reread(d.record, likely[id(d)], pipe)
        replies = iter(pipe.execute() if now_read else [])
        read = [  # in `live`'s order, as `now_read` was queued
            read_ahead[d.record.id]
            if d.record.id in read_ahead
            else self._parse_reread(d.record, likely[id(d)], replies)
            for d in live
        ]
        owned = self._owned_devices(live, [(r.shopper, r.owners) for r in read])
        held: list[MessageDelivery] = []
        first_tries: list[MessageDelivery] = []
        for d, (shopper, stock, pushed, _), devices in zip(live, read, owned, strict=True):
            if why_not := self._why_not(d, shopper, devices, stock, pushed):
                d.result = {"action": "suppressed", "reason": why_not}
                held.append(d)
                continue
            assert d.rule is not None  # `_why_not` names a disabled rule
            until = self._policy.quiet_until(d.rule, shopper.preferences, now)
            if until is not None:
                why_later = f"quiet hours until {until:.0f}"
                d.result = {"action": "deferred", "reason": why_later, "defer_until": until}
                held.append(d)
            elif d.request.attempt == 0:
                first_tries.append(d)
        return held, first_tries

    def _owned_devices(
        self, live: Sequence[MessageDelivery], read: Sequence[tuple[Shopper, dict[str, str | None]]]
    ) -> list[dict[str, DeviceRecord]]:
        """Each delivery's active devices that its shopper still owns, from the owners
        read with the re-check (per delivery: device id -> owner) and, for devices not
        among them, one more round trip. A device another shopper registered since goes
        to `d.moved`: a registration moves a device in one step, but the owner key of a
        device can expire before the shopper's list does, and lists written before that
        step may hold stale entries."""
        asked = [shopper.active_devices() for shopper, _ in read]
        unread = [
            [i for i in devices if i not in known]
            for devices, (_, known) in zip(asked, read, strict=True)
        ]
        if any(unread):
            pipe = self._client.pipeline(transaction=False)
            for ids in unread:
                self._contacts.owners(ids, pipe)
            more = iter(pipe.execute())
            for (_, known), ids in zip(read, unread, strict=True):
                known.update((device_id, next(more)) for device_id in ids)
        out: list[dict[str, DeviceRecord]] = []
        for d, devices, (_, owners) in zip(live, asked, read, strict=True):
            mine: dict[str, DeviceRecord] = {}
            for device_id, record in devices.items():
                owner = owners[device_id]
                if owner is None or owner == d.record.user_id:
                    mine[device_id] = record
                else:
                    d.moved.append((device_id, float(record.get("registered_at", 0))))
            out.append(mine)
        return out

    def _why_not(
        self,
        d: MessageDelivery,
        shopper: Shopper,
        devices: dict[str, DeviceRecord],
        stock: list[str | None],
        pushed_since: set[str],
    ) -> str:
        """Why the message must not go out now ('' if it may); sets `d.targets`, the
        consented `devices` (active, owned) in the rule's channel order. `pushed_since`
        are the items pushed to the shopper since the message was made."""
        rule, record = d.rule, d.record
        if rule is None:
            return f"rule {record.rule} disabled"
        channels = self._policy.consented_channels(
            rule, [r["channel"] for r in devices.values()], shopper.preferences
        )
        if not channels:
            return "consent withdrawn or no active device"
        bought_since = shopper.bought_since(record.created_at)
        if why_not := KINDS[rule.kind].holds_at_send(record.items, bought_since):
            return why_not
        left = [i for i in record.items if i not in bought_since]
        in_stock = dict(zip(record.items, stock, strict=True))
        if all(in_stock[i] == "0" for i in left):
            return "out of stock"
        if KINDS[rule.kind].about == "item" and in_stock[record.items[0]] == "0":
            return "its item is out of stock"  # a price drop is never sent without its item
        repeats = not KINDS[rule.kind].leads_with_own_items and d.request.attempt == 0
        if repeats and all(i in pushed_since for i in record.items):
            # as the no-repeat step would say now; a retry finds its own first send here
            return "no_repeat: every item was pushed by another message since"
        order = {c: n for n, c in enumerate(rule.channels)}
        ranked = sorted(
            ((i, r) for i, r in devices.items() if r["channel"] in channels),
            key=lambda kv: (order[kv[1]["channel"]], kv[0]),
        )
        only = d.request.only
        d.targets = {i: r for i, r in ranked if only is None or i in only}
        return ""

    def _reserve_and_claim(
        self,
        live: Sequence[MessageDelivery],
        first_tries: Sequence[MessageDelivery],
        owner: str,
        now: float,
        writes: FiringWrites | None,
    ) -> list[MessageDelivery]:
        """Reserve the caps of the first tries and claim every target device, in one round
        trip (after the firing's `writes`, not sent yet, which it carries first); set
        each delivery's sends. Returns the first tries a cap now holds back (suppressed:
        their claims are undone when they settle, never sent)."""
        wanted = [
            (d, device_id)
            for d in live
            if d.record.cell != "holdout"  # never sent: nothing to claim
            for device_id in d.targets
        ]

        def queue(pipe: StatePipeline) -> None:
            for d in first_tries:
                assert d.rule is not None  # `_why_not` names a disabled rule
                self._policy.queue_reserve(pipe, d.rule, d.record.user_id, d.record.id, now)
            self._outbox.queue_claims(
                pipe, [(d.record.id, device_id) for d, device_id in wanted], owner, now
            )

        if writes is not None:
            replies = writes.run_with(queue)
            for reply in replies:  # as a pipeline of their own would raise it
                if isinstance(reply, Exception):
                    raise reply
        else:
            pipe = self._client.pipeline(transaction=False)
            queue(pipe)
            replies = pipe.execute() if len(pipe) else []
        capped: list[MessageDelivery] = []
        for d, limit in zip(first_tries, replies[: len(first_tries)], strict=True):
            if limit not in {"ok", "already"}:
                d.result = {"action": "suppressed", "reason": f"cap reached at send time: {limit}"}
                capped.append(d)
        held = {id(d) for d in capped}
        for (d, device_id), ok in zip(wanted, replies[len(first_tries) :], strict=True):
            if not ok:
                continue
            if id(d) in held:
                d.unclaim.append(device_id)
                continue
            try:
                d.sends.append((device_id, self._message(d.record, d.targets[device_id])))
            except Exception as exc:  # a corrupt device record: that device fails alone
                log.error("message %s to device %s: %s\n%s",
                          d.record.id, device_id, describe(exc), stack(exc))  # fmt: skip
                d.broken.append((device_id, describe(exc)))
        return capped

    def _message(self, record: MessageRecord, device: DeviceRecord) -> Message:
        return Message(
            id=record.id,
            device=_push_device(device),
            title=record.title,
            body=record.body,
            image=record.image,
            link=record.link,
            data=record.data,
            coupon=record.coupon,
            locale=record.locale,
            purpose=Purpose(record.purpose),
            ttl=record.ttl_s,
            priority=Priority.HIGH if record.purpose == "transactional" else Priority.NORMAL,
        )
