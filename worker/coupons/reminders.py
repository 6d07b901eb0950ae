"""Reminders before a code expires: the `coupon_expiring` rules.

For each code issued (by a rule or a campaign), every enabled `coupon_expiring` rule gets a
delayed firing `lead_s` before the code's expiry (none when that moment has passed). Its
trigger is the code (`coupon:<code>`), so a retried issue schedules the same job and a
firing sends one message at most. When it fires, the code must still be the shopper's,
unredeemed and unexpired (`Coupons.held`), or nothing is sent; the message shows that code
(`coupon` in the template), issuing nothing new.

    [[rules]]
    name = "coupon_reminder"
    kind = "coupon_expiring"
    lead_s = 86400
    title = "Your code {{ coupon }} expires soon"
    body = "{{ coupon.percent_off }}% off {{ items[0].title }} and more, until tomorrow."
"""

from __future__ import annotations

from collections.abc import Sequence

from worker.policy.jobs import Trigger
from worker.policy.kinds import KINDS
from worker.rules import Rule
from worker.store.client import StatePipeline
from worker.store.delayed import DelayedJobs

EXTRA_CODE = "coupon_code"  # the FireJob extra naming the code (not `coupon`: extras reach
# the template context, where `coupon` is the code with its offer)


class Reminders:
    def __init__(self, rules: Sequence[Rule], delayed: DelayedJobs) -> None:
        self._rules = [r for r in rules if r.enabled and KINDS[r.kind].on_issue]
        self._delayed = delayed

    def schedule(
        self, user_id: str, code: str, expires_at: float, now: float, pipe: StatePipeline
    ) -> None:
        """Park each reminder rule's firing for this code (in `pipe`); idempotent."""
        for rule in self._rules:
            due = expires_at - rule.lead_s
            if due <= now:
                continue
            trigger = Trigger(
                rule=rule.name, user_id=user_id, trigger_id=f"coupon:{code}", trigger_ts=now,
                items=(), due=due, extra=((EXTRA_CODE, code),),
            )  # fmt: skip
            self._delayed.schedule(trigger.job(), due, pipe=pipe)
