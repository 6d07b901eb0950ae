"""push: message composition and the HTTP gateways (FCM, APNs, Web Push, webhook) with
their delivery policy. A library: imports nothing of `worker` or `indexing`.

The worker builds `Message`s, sends them through a `Gateway` (or a `Router` of them,
wrapped in a `Deliverer` for breaker, rate limit and retry policy) and acts on the
`DeliveryResult`. See docs/push.md.
"""

from push.coupons import format_coupon, new_coupon, validate_coupon
from push.errors import (
    CompositionError,
    ConfigError,
    CouponError,
    CredentialsError,
    InvalidMessageError,
    PayloadTooLargeError,
    PushError,
    TemplateError,
    TemplateSecurityError,
    UnsafeDestinationError,
)
from push.gateway import Gateway, Router, send_many, send_one
from push.http import make_client
from push.messages import (
    Channel,
    Device,
    Message,
    Priority,
    Purpose,
    WebPushSubscription,
    tracked_link,
)
from push.redact import fingerprint
from push.result import DeliveryResult, Outcome
from push.templates import TemplateSet

__all__ = [
    "Channel",
    "CompositionError",
    "ConfigError",
    "CouponError",
    "CredentialsError",
    "DeliveryResult",
    "Device",
    "Gateway",
    "InvalidMessageError",
    "Message",
    "Outcome",
    "PayloadTooLargeError",
    "Priority",
    "Purpose",
    "PushError",
    "Router",
    "TemplateError",
    "TemplateSecurityError",
    "TemplateSet",
    "UnsafeDestinationError",
    "WebPushSubscription",
    "fingerprint",
    "format_coupon",
    "make_client",
    "new_coupon",
    "send_many",
    "send_one",
    "tracked_link",
    "validate_coupon",
]
