"""What a `pushrec.deliver` task asks for and what each request came to.

`DeliveryRequest` is one message to deliver (its kwargs are the deliver task's contract
inside pushrec); `DeliveryOutcome` is what `MessageSender.deliver_many` returns for it;
`FreshMessage` what a firing hands over of a message it has just stored, and
`FiringWrites` the firing's writes that must land before it is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypedDict

from worker.delivery.outbox import MessageRecord
from worker.shoppers.inputs import InvalidInput
from worker.store.client import StatePipeline, unqueue_after


@dataclass(frozen=True)
class DeliveryRequest:
    """One message to deliver: a first attempt to every device, or a retry (`attempt`
    > 0) to the devices named in `only`."""

    message_id: str
    attempt: int = 0
    only: tuple[str, ...] | None = None

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> list[DeliveryRequest]:
        """The requests of a `pushrec.deliver` call: `message_ids` (first attempts), or
        one `message_id` with its `attempt` and `devices` (a parked retry). Raises
        `InvalidInput` ("bad_call") for anything else: the task is internal, but a message
        on the broker is still input."""
        try:
            if "message_ids" in kwargs:
                ids = kwargs["message_ids"]
                if not isinstance(ids, list):
                    raise TypeError("message_ids must be a list")
                return [cls(str(mid)) for mid in ids]
            only = kwargs.get("devices")
            if only is not None and not isinstance(only, list):
                raise TypeError("devices must be a list")
            return [
                cls(
                    str(kwargs["message_id"]),
                    int(kwargs.get("attempt", 0)),
                    tuple(str(d) for d in only) if only is not None else None,
                )
            ]
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise InvalidInput("bad_call", f"deliver: {type(exc).__name__}: {exc}") from None

    def retry_kwargs(self, devices: list[str]) -> dict[str, Any]:
        return {"message_id": self.message_id, "attempt": self.attempt + 1, "devices": devices}

    def kwargs(self) -> dict[str, Any]:
        """This very request again, later (a deferral): `from_kwargs` gives it back."""
        again: dict[str, Any] = {"message_id": self.message_id, "attempt": self.attempt}
        if self.only is not None:
            again["devices"] = list(self.only)
        return again


class FreshMessage(NamedTuple):
    """A message its firing has just stored, handed to delivery in the same task: the
    record (not read back) and the shopper's active devices as the firing read them
    (their owners are read with the send-time re-check; a device added since costs
    one more round trip)."""

    record: MessageRecord
    devices: tuple[str, ...]


class FiringWrites:
    """A firing's writes (its decisions and counts, its messages' place among the queued
    ones), which must land before a delivery in the same task sends: first in that
    delivery's caps-and-claims round trip (`MessageSender`), else alone (`land`). Their
    errors, and a round trip failing with them, are the task's to retry, never
    delivery's to hand to the push queue: kept as `failed`."""

    def __init__(self, pipe: StatePipeline) -> None:
        self._pipe = pipe
        self.sent = False
        self.failed: BaseException | None = None

    def run_with(self, more: Callable[[StatePipeline], None]) -> list[Any]:
        """Send the writes (unless sent already) with the commands `more` queues after
        them, in one round trip; return the replies of those, errors among them as they
        are. An error among the writes raises."""
        pipe = self._pipe  # empty once run: a pipeline's `execute` resets it
        theirs = 0 if self.sent else len(pipe)
        try:
            more(pipe)
        except BaseException:
            unqueue_after(pipe, theirs)  # the writes alone stay, for `land`
            raise
        self.sent = True
        if not len(pipe):
            return []
        try:
            replies = pipe.execute(raise_on_error=False)
        except BaseException as exc:
            if theirs:  # the writes went with it: whether they landed is not known
                self.failed = exc
            raise
        for reply in replies[:theirs]:
            if isinstance(reply, Exception):
                self.failed = reply
                raise reply
        return replies[theirs:]

    def land(self) -> None:
        """Send the writes alone, unless sent already."""
        if not self.sent:
            self.run_with(lambda pipe: None)


DeliveryAction = Literal[
    "sent",
    "retrying",
    "failed",
    "suppressed",
    "deferred",
    "held_out",
    "nothing_to_send",
    "settled",
    "missing",
]


class DeliveryOutcome(TypedDict, total=False):
    """What one `deliver_many` request came to. `sent`, `retrying` and `failed` carry the
    device counts; `suppressed` carries the reason it may no longer go out; `deferred`
    (quiet hours began since it was decided) the reason and when it will be tried again;
    `held_out` (a holdout cell's message that passed every check) the reason."""

    action: DeliveryAction
    message_id: str
    reason: str
    delivered: int
    retry_devices: int
    retry_after: float | None
    defer_until: float
