"""Firing a rule for one shopper: re-check, recommend, apply the policy, queue a message.

`Firer.fire(job)` is what the `pushrec.fire` task does. It re-checks the rule's
condition against the shopper's state now (a purchase within the delay cancels the cart
reminder), picks the items, runs the contact policy and acts on its verdict: queue the
message (created once per id), park the job until quiet hours end, or record why
nothing was sent. Every outcome leaves a decision record on the shopper.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from indexing import LoadedIndex
from push import TemplateSet, new_coupon
from push.errors import PushError
from worker.audit import Audit
from worker.catalog import Catalog
from worker.contacts import Contacts, parse_devices, parse_preferences
from worker.contract import DELIVER, FIRE
from worker.delayed import DelayedJobs, Job
from worker.index_holder import IndexHolder
from worker.keys import Keys
from worker.outbox import MessageRecord, Outbox, message_id
from worker.policy import ContactPolicy, Verdict
from worker.recommend import Candidate, ShopperView, recommend
from worker.rules import Rule, enabled_rule
from worker.settings import Settings
from worker.state import StateStore

log = logging.getLogger(__name__)

ITEM_KINDS = frozenset({"cart_abandoned", "price_drop", "back_in_stock", "replenish"})

Enqueue = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class FireJob:
    rule: str
    user_id: str
    trigger_id: str
    trigger_ts: float
    items: tuple[str, ...]
    extra: Mapping[str, str]

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> FireJob:
        return cls(
            rule=str(kwargs["rule"]),
            user_id=str(kwargs["user_id"]),
            trigger_id=str(kwargs["trigger_id"]),
            trigger_ts=float(kwargs["trigger_ts"]),
            items=tuple(str(i) for i in kwargs.get("items", ())),
            extra={str(k): str(v) for k, v in dict(kwargs.get("extra", {})).items()},
        )


def rule_templates(rules: Sequence[Rule]) -> TemplateSet:
    """One template per rule (title, body, link) in its default locale."""
    templates: dict[str, dict[str, dict[str, str]]] = {}
    for rule in rules:
        fields = {"title": rule.title, "body": rule.body}
        if rule.link:
            fields["link"] = rule.link
        templates[rule.name] = {"en": fields}
    return TemplateSet(templates, default_locale="en")


@dataclass(frozen=True)
class _Shopper:
    view: ShopperView
    cart_added: dict[str, float]  # item -> time added to the cart
    purchased_at: dict[str, float]  # item -> time of its last purchase
    devices: dict[str, dict[str, Any]]
    prefs: dict[str, str]


class Firer:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        settings: Settings,
        state: StateStore,
        catalog: Catalog,
        contacts: Contacts,
        policy: ContactPolicy,
        outbox: Outbox,
        audit: Audit,
        delayed: DelayedJobs,
        index: IndexHolder | None,
        enqueue: Enqueue,
    ) -> None:
        self._client = client
        self._keys = keys
        self._settings = settings
        self._state = state
        self._catalog = catalog
        self._contacts = contacts
        self._policy = policy
        self._outbox = outbox
        self._audit = audit
        self._delayed = delayed
        self._index = index
        self._enqueue = enqueue
        self._templates = rule_templates(settings.rules)

    # --- reading the shopper ----------------------------------------------------------
    def _shopper(self, user_id: str) -> _Shopper:
        """Everything firing reads of one shopper, in one round trip."""
        k = self._keys.user(user_id)
        pipe = self._client.pipeline(transaction=False)
        pipe.lrange(k.recent, 0, -1)
        pipe.zrange(k.purchased, 0, -1, withscores=True)
        pipe.zrange(k.cart_added, 0, -1, withscores=True)
        pipe.hgetall(k.devices)
        pipe.hgetall(k.preferences)
        recent_raw, purchased, cart, devices, prefs = pipe.execute()
        view = ShopperView(
            recent=[json.loads(r) for r in recent_raw],
            purchased=frozenset(i for i, _ in purchased),
            cart=frozenset(i for i, _ in cart),
        )
        return _Shopper(
            view, dict(cart), dict(purchased), parse_devices(devices), parse_preferences(prefs)
        )

    # --- the condition, re-checked when the rule fires ------------------------------
    def _still_holds(
        self,
        rule: Rule,
        job: FireJob,
        shopper: ShopperView,
        cart_added: dict[str, float],
        purchased_at: dict[str, float],
    ) -> tuple[list[str], str]:
        """(the rule's own items now, '') or ([], why the rule no longer applies)."""
        after = [r for r in shopper.recent if float(r["ts"]) > job.trigger_ts]
        if rule.kind == "cart_abandoned":
            if any(r["type"] in {"purchase", "remove_from_cart"} for r in after):
                return [], "purchase or cart removal since the trigger"
            cart = sorted(shopper.cart, key=lambda i: -cart_added.get(i, 0.0))
            return (cart, "") if cart else ([], "cart is empty")
        if rule.kind == "browse_abandoned":
            if any(r["type"] in {"add_to_cart", "purchase"} for r in after):
                return [], "added to cart or bought since"
            return list(job.items), ""
        if rule.kind in {"price_drop", "back_in_stock", "replenish"}:
            item = job.items[0]
            bought_at = purchased_at.get(item)
            if bought_at is not None and bought_at > job.trigger_ts:
                return [], "bought since"
            return [item], ""
        return list(job.items), ""

    # --- firing -----------------------------------------------------------------------
    def fire(self, job: FireJob, now: float) -> dict[str, Any]:
        rule = enabled_rule(self._settings.rules, job.rule)
        if rule is None:
            return {"action": "dropped", "reason": f"no enabled rule {job.rule!r}"}
        mid = message_id(rule.name, job.user_id, job.trigger_id)
        decision: dict[str, Any] = {
            "at": now,
            "rule": rule.name,
            "trigger": {"id": job.trigger_id, "ts": job.trigger_ts, "items": list(job.items)},
            "message_id": mid,
        }

        now_state = self._shopper(job.user_id)
        shopper = now_state.view
        own_items, why_not = self._still_holds(
            rule, job, shopper, now_state.cart_added, now_state.purchased_at
        )
        if why_not:
            return self._finish(job.user_id, rule, decision, "suppress", f"condition: {why_not}")

        index = self._index.index if self._index is not None else None
        trending = [] if index is not None else self._state.trending_items(now, 24, 4 * rule.items)
        candidates, facts = self._pick(rule, shopper, own_items, index, trending, now)
        decision["candidates"] = [c.as_dict() for c in candidates]
        if not candidates:
            return self._finish(job.user_id, rule, decision, "suppress", "no items to offer")

        active = [d["channel"] for d in now_state.devices.values() if d.get("active", True)]
        prefs = now_state.prefs
        verdict = self._policy.decide(
            rule,
            job.user_id,
            mid,
            [c.item_id for c in candidates],
            active,
            prefs,
            now,
            item_rule=rule.kind in ITEM_KINDS,
        )
        decision["policy"] = verdict.as_dict()
        return self._act(rule, job, mid, verdict, candidates, facts, prefs, decision, now)

    def _pick(
        self,
        rule: Rule,
        shopper: ShopperView,
        own_items: list[str],
        index: LoadedIndex | None,
        trending: list[tuple[str, float]],
        now: float,
    ) -> tuple[list[Candidate], Mapping[str, Mapping[str, str]]]:
        return recommend(
            index,
            shopper,
            k=rule.items,
            now=now,
            catalog=self._catalog.get_many,
            trigger_items=own_items,
            include_trigger_items=rule.kind in ITEM_KINDS,
            allow_cart=rule.kind == "cart_abandoned",
            trending=trending,
        )

    def _act(
        self,
        rule: Rule,
        job: FireJob,
        mid: str,
        verdict: Verdict,
        candidates: list[Candidate],
        facts: Mapping[str, Mapping[str, str]],
        prefs: dict[str, str],
        decision: dict[str, Any],
        now: float,
    ) -> dict[str, Any]:
        items = [c.item_id for c in candidates if c.item_id in set(verdict.items)]
        if verdict.action == "suppress":
            return self._finish(job.user_id, rule, decision, "suppress", verdict.reason)
        if verdict.action == "defer":
            assert verdict.defer_until is not None
            kwargs = {
                "rule": job.rule,
                "user_id": job.user_id,
                "trigger_id": job.trigger_id,
                "trigger_ts": job.trigger_ts,
                "items": list(job.items),
                "extra": dict(job.extra),
            }
            self._delayed.schedule(Job(f"defer:{mid}", FIRE, kwargs), verdict.defer_until)
            return self._finish(job.user_id, rule, decision, "defer", verdict.reason)
        if verdict.action == "held_out":
            remember = (items, "holdout", now)
            return self._finish(job.user_id, rule, decision, "held_out", verdict.reason, remember)

        try:
            record = self._compose(rule, job, mid, items, facts, verdict.channels, prefs, now)
        except PushError as exc:  # a template bug: nothing is sent, the reason is kept
            return self._finish(job.user_id, rule, decision, "suppress", f"compose: {exc}")
        created = self._outbox.create(record)
        if created or self._outbox.state(mid).get("state") == "queued":
            self._enqueue(DELIVER, {"message_id": mid})
        if created:
            decision["message"] = {"title": record.title, "body": record.body, "items": items}
            return self._finish(job.user_id, rule, decision, "queued", "", (items, "treated", now))
        return {"action": "duplicate", "message_id": mid}

    def _compose(
        self,
        rule: Rule,
        job: FireJob,
        mid: str,
        items: list[str],
        facts: Mapping[str, Mapping[str, str]],
        channels: list[str],
        prefs: dict[str, str],
        now: float,
    ) -> MessageRecord:
        item_views = [_item_view(i, facts.get(i, {})) for i in items]
        trigger = _item_view(job.items[0], facts.get(job.items[0], {})) if job.items else {}
        if "old" in job.extra:
            trigger["old_price"] = float(job.extra["old"])
            trigger["price"] = float(job.extra.get("new", trigger.get("price", 0.0)))
        coupon = new_coupon() if rule.coupon else None
        locale = prefs.get("locale", "en")
        context = {
            "items": item_views,
            "trigger": trigger,
            "reason_item": trigger,
            "coupon": coupon,
            "currency": self._settings.currency,
            "locale": locale,
            **dict(job.extra),
        }
        text = self._templates.render(rule.name, locale, context)
        link = text.get("link") or (item_views[0].get("url") if item_views else None)
        return MessageRecord(
            id=mid,
            rule=rule.name,
            user_id=job.user_id,
            trigger_id=job.trigger_id,
            items=items,
            title=text["title"],
            body=text["body"],
            purpose=rule.purpose,
            channels=channels,
            created_at=now,
            link=str(link) if link else None,
            image=str(item_views[0].get("image"))
            if item_views and item_views[0].get("image")
            else None,
            coupon=coupon,
            locale=locale,
            ttl_s=rule.ttl_s,
            data={"rule": rule.name, "items": ",".join(items)},
        )

    def _finish(
        self,
        user_id: str,
        rule: Rule,
        decision: dict[str, Any],
        action: str,
        reason: str,
        remember: tuple[list[str], str, float] | None = None,
    ) -> dict[str, Any]:
        """Record the decision, count it, and note its items for attribution (`remember`:
        items, holdout cell, time): one round trip."""
        decision["action"] = action
        decision["reason"] = reason
        field = {"suppress": "suppressed", "defer": "deferred"}.get(action, action)
        writes = self._client.pipeline(transaction=False)
        self._audit.count(rule.name, "fired", pipe=writes)
        self._audit.count(rule.name, field, pipe=writes)
        self._audit.record_decision(user_id, decision, pipe=writes)
        if remember is not None:
            items, cell, now = remember
            mid = str(decision["message_id"])
            self._audit.remember_items(user_id, items, mid, rule.name, cell, now, pipe=writes)
        writes.execute()
        return decision


def _item_view(item_id: str, fields: Mapping[str, str]) -> dict[str, Any]:
    view: dict[str, Any] = {"item_id": item_id, "title": fields.get("title") or item_id}
    for name in ("category", "brand", "url", "image"):
        if fields.get(name):
            view[name] = fields[name]
    if fields.get("price"):
        view["price"] = float(fields["price"])
    return view
