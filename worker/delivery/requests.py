"""What a `pushrec.deliver` task asks for and what each request came to.

`DeliveryRequest` is one message to deliver (its kwargs are the deliver task's contract
inside pushrec); `DeliveryOutcome` is what `MessageSender.deliver_many` returns for it;
`FreshMessage` what a firing hands over of a message it has just stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypedDict

from worker.delivery.outbox import MessageRecord
from worker.shoppers.inputs import InvalidInput


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
