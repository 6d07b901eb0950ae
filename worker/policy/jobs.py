"""A rule to fire for a shopper: parked until due (`Trigger`) or firing now (`FireJob`).

A trigger is made by its rule's kind (`kinds.py`) from an event or a catalog change. Due
now, it fires in the same task (`FireJob`); due later, it waits in the delayed set as a
`pushrec.fire` job whose kwargs are `FireJob.kwargs()`. The ids make both idempotent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.contract import FIRE
from worker.shoppers.inputs import InvalidInput
from worker.store.delayed import Job


@dataclass(frozen=True)
class FireJob:
    rule: str
    user_id: str
    trigger_id: str
    trigger_ts: float
    items: tuple[str, ...]
    extra: Mapping[str, str]

    @classmethod
    def from_kwargs(cls, kwargs: Any) -> FireJob:
        """The job of `kwargs()`. Raises `InvalidInput` ("bad_call") for anything else:
        the task is internal, but a message on the broker is still input."""
        try:
            if not isinstance(kwargs, Mapping):
                raise TypeError(f"a job is a JSON object, not {type(kwargs).__name__}")
            trigger_ts = float(kwargs["trigger_ts"])
            items, extra = kwargs.get("items", ()), kwargs.get("extra", {})
            if not math.isfinite(trigger_ts):
                raise ValueError("trigger_ts is not finite")
            if not isinstance(items, list | tuple) or not isinstance(extra, Mapping):
                raise TypeError("items must be a list and extra an object")
            return cls(
                rule=str(kwargs["rule"]),
                user_id=str(kwargs["user_id"]),
                trigger_id=str(kwargs["trigger_id"]),
                trigger_ts=trigger_ts,
                items=tuple(str(i) for i in items),
                extra={str(k): str(v) for k, v in extra.items()},
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise InvalidInput("bad_call", f"fire job: {type(exc).__name__}: {exc}") from None

    def kwargs(self) -> dict[str, Any]:
        """The `pushrec.fire` kwargs of this job (`from_kwargs` reads them back)."""
        return {
            "rule": self.rule,
            "user_id": self.user_id,
            "trigger_id": self.trigger_id,
            "trigger_ts": self.trigger_ts,
            "items": list(self.items),
            "extra": dict(self.extra),
        }


@dataclass(frozen=True)
class Trigger:
    """A rule to fire for a shopper, due at `due` (epoch s). `trigger_id` makes it
    idempotent: the same trigger twice is one message."""

    rule: str
    user_id: str
    trigger_id: str
    trigger_ts: float
    items: tuple[str, ...]
    due: float
    extra: tuple[tuple[str, str], ...] = ()
    debounce: bool = False  # from the rule's kind: one pending per shopper

    def fire_job(self) -> FireJob:
        return FireJob(
            rule=self.rule,
            user_id=self.user_id,
            trigger_id=self.trigger_id,
            trigger_ts=self.trigger_ts,
            items=self.items,
            extra=dict(self.extra),
        )

    def job(self) -> Job:
        """The delayed job firing this trigger: a debounced rule keeps one per shopper."""
        job_id = (
            f"{self.rule}:{self.user_id}"
            if self.debounce
            else f"{self.rule}:{self.user_id}:{self.trigger_id}"
        )
        return Job(job_id=job_id, task=FIRE, kwargs=self.fire_job().kwargs())
