"""One job on its way through `Firer.fire_many` (`Firing`), and its steps run so that a bug
in one job's step settles that job alone (`isolated`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, ParamSpec, TypeVar

from push import fingerprint
from worker.coupons import IssuedCoupon
from worker.delivery.outbox import MessageRecord
from worker.policy.jobs import FireJob
from worker.rules import Rule
from worker.shoppers.audit import Decision, FireAction
from worker.store.errors import describe, stack

log = logging.getLogger(__name__)


@dataclass
class Firing:
    """One job: its rule, its message's id and the decision filled as it goes."""

    job: FireJob
    rule: Rule
    mid: str
    decision: Decision
    action: FireAction | Literal[""] = ""  # "" until decided
    reason: str = ""
    step: str = ""  # what settled it: a policy step, or condition, recommend, compose, error
    record: MessageRecord | None = None
    defer_until: float | None = None
    held: IssuedCoupon | None = None  # a reminder's code, still the shopper's
    before: str = ""  # the state of its message before this try; "" when there is none
    devices: tuple[str, ...] = ()  # its shopper's active devices, as read


T = TypeVar("T")
P = ParamSpec("P")


def isolated(f: Firing, step: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | None:
    """Run one firing's own step; a bug in it settles that firing as `error` (logged,
    recorded and counted as failed) instead of failing the whole batch."""
    try:
        return step(*args, **kwargs)
    except Exception as exc:
        reason = describe(exc)
        log.error("rule %s for shopper %s failed: %s\n%s",
                  f.rule.name, fingerprint(f.job.user_id), reason, stack(exc))  # fmt: skip
        f.action, f.reason, f.step = "error", reason, "error"
        return None
