"""`DeliveryResult`: the one answer every gateway gives, sorted by what the caller must do.

=================  ============================================  =========================
outcome            meaning                                       caller's action
=================  ============================================  =========================
delivered          the gateway accepted it (`gateway_id`)        record success
retry              transient (5xx, 429, timeout, breaker open)   retry after `retry_after` s
device_invalid     token/subscription is gone (`invalid_since`)  deactivate the device
failed             permanent for this message (`reason`)         drop and record
credentials        our credentials are rejected                  alert; breaker is open
=================  ============================================  =========================
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

__all__ = ["DeliveryResult", "Outcome"]


class Outcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DEVICE_INVALID = "device_invalid"
    FAILED = "failed"
    CREDENTIALS = "credentials"


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What happened to one message.

    `reason` is a short machine-readable code such as ``"apns:BadDeviceToken"`` or
    ``"fcm:UNREGISTERED"``; `status` the HTTP status when there was one; `retry_after`
    seconds (set for `retry`, from Retry-After or the retry policy); `invalid_since` the
    gateway's timestamp for `device_invalid` where it gives one (APNs 410).
    """

    outcome: Outcome
    message_id: str
    channel: str
    gateway_id: str | None = None
    retry_after: float | None = None
    invalid_since: datetime | None = None
    reason: str = ""
    status: int | None = None

    @property
    def delivered(self) -> bool:
        return self.outcome is Outcome.DELIVERED

    @property
    def retryable(self) -> bool:
        return self.outcome is Outcome.RETRY

    def with_retry_after(self, seconds: float) -> DeliveryResult:
        return replace(self, retry_after=seconds)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for task results, logs and the CLI)."""
        return {
            "outcome": self.outcome.value,
            "message_id": self.message_id,
            "channel": self.channel,
            "gateway_id": self.gateway_id,
            "retry_after": self.retry_after,
            "invalid_since": self.invalid_since.isoformat() if self.invalid_since else None,
            "reason": self.reason,
            "status": self.status,
        }

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> DeliveryResult:
        """Inverse of `to_dict` (results cross task boundaries as JSON)."""
        since = value.get("invalid_since")
        retry_after = value.get("retry_after")
        status = value.get("status")
        return cls(
            outcome=Outcome(value["outcome"]),
            message_id=str(value["message_id"]),
            channel=str(value["channel"]),
            gateway_id=value.get("gateway_id"),
            retry_after=None if retry_after is None else float(retry_after),
            invalid_since=datetime.fromisoformat(since) if since else None,
            reason=str(value.get("reason", "")),
            status=None if status is None else int(status),
        )

    # --- constructors ----------------------------------------------------------------
    @classmethod
    def ok(
        cls, message_id: str, channel: str, gateway_id: str | None, status: int = 200
    ) -> DeliveryResult:
        return cls(Outcome.DELIVERED, message_id, channel, gateway_id=gateway_id, status=status)

    @classmethod
    def retry(
        cls,
        message_id: str,
        channel: str,
        reason: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> DeliveryResult:
        return cls(
            Outcome.RETRY,
            message_id,
            channel,
            retry_after=retry_after,
            reason=reason,
            status=status,
        )

    @classmethod
    def device_invalid(
        cls,
        message_id: str,
        channel: str,
        reason: str,
        *,
        invalid_since: datetime | None = None,
        status: int | None = None,
    ) -> DeliveryResult:
        return cls(
            Outcome.DEVICE_INVALID,
            message_id,
            channel,
            invalid_since=invalid_since,
            reason=reason,
            status=status,
        )

    @classmethod
    def failed(
        cls, message_id: str, channel: str, reason: str, *, status: int | None = None
    ) -> DeliveryResult:
        return cls(Outcome.FAILED, message_id, channel, reason=reason, status=status)

    @classmethod
    def credentials(
        cls, message_id: str, channel: str, reason: str, *, status: int | None = None
    ) -> DeliveryResult:
        return cls(Outcome.CREDENTIALS, message_id, channel, reason=reason, status=status)
