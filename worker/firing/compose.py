"""A rule's message for one shopper: its templates rendered over the chosen items.

`Composer` compiles one template set (title, body, link) per rule once per process and
renders a `MessageRecord` from the items firing chose, the catalog facts read for them,
the trigger's extras (old and new price, interval, category) and the shopper's locale.
It reads and writes nothing: a coupon, when the rule gives one, was issued by firing
(`worker/coupons/ledger.py`) and reaches the templates as `coupon` (renders as the code;
`coupon.percent_off`, `amount_off`, `currency`, `min_basket`, `expires`) and the record
as `coupon` (the code) and `offer`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from push import TemplateSet
from worker.coupons import IssuedCoupon
from worker.delivery.outbox import MessageRecord
from worker.policy.jobs import FireJob
from worker.rules import Rule


def rule_templates(rules: Sequence[Rule]) -> TemplateSet:
    """One template per rule (title, body, link) in its default locale."""
    templates: dict[str, dict[str, dict[str, str]]] = {}
    for rule in rules:
        fields = {"title": rule.title, "body": rule.body}
        if rule.link:
            fields["link"] = rule.link
        templates[rule.name] = {"en": fields}
    return TemplateSet(templates, default_locale="en")


class Composer:
    def __init__(self, rules: Sequence[Rule], currency: str) -> None:
        self._templates = rule_templates(rules)
        self._currency = currency

    def compose(
        self,
        rule: Rule,
        job: FireJob,
        mid: str,
        items: list[str],
        facts: Mapping[str, Mapping[str, str]],
        channels: list[str],
        prefs: dict[str, str],
        now: float,
        cell: str = "treated",
        coupon: IssuedCoupon | None = None,
    ) -> MessageRecord:
        """The message of `rule` for `job`'s shopper about `items` (best first), in the
        shopper's locale, in the experiment `cell`, with `coupon` when one was issued;
        raises `PushError` for a template that cannot render."""
        item_views = [_item_view(i, facts.get(i, {})) for i in items]
        trigger = _item_view(job.items[0], facts.get(job.items[0], {})) if job.items else {}
        if "old" in job.extra:
            trigger["old_price"] = float(job.extra["old"])
            trigger["price"] = float(job.extra.get("new", trigger.get("price", 0.0)))
        locale = prefs.get("locale", "en")
        context = {
            "items": item_views,
            "trigger": trigger,
            "reason_item": trigger,
            "coupon": coupon.template_text() if coupon else None,
            "currency": self._currency,
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
            coupon=coupon.code if coupon else None,
            offer=coupon.as_dict() if coupon else None,
            locale=locale,
            ttl_s=rule.ttl_s,
            data={"rule": rule.name, "items": ",".join(items)},
            cell=cell,
        )


def _item_view(item_id: str, fields: Mapping[str, str]) -> dict[str, Any]:
    view: dict[str, Any] = {"item_id": item_id, "title": fields.get("title") or item_id}
    for name in ("category", "brand", "url", "image"):
        if fields.get(name):
            view[name] = fields[name]
    if fields.get("price"):
        view["price"] = float(fields["price"])
    return view
