"""push: message composition and the HTTP gateways (FCM, APNs, Web Push, webhook) with
their delivery policy. A library: imports nothing of `worker` or `indexing`.

The worker builds `Message`s, sends them through a `Gateway` (or a `Router` of them,
wrapped in a `Deliverer` for breaker, rate limit and retry policy) and acts on the
`DeliveryResult`. See docs/push.md.
"""

from push.config import GatewayConfig, open_gateways
from push.coupons import OfferText, format_coupon, new_coupon, validate_coupon
from push.delivery import CircuitBreaker, Deliverer, RateLimit, RateLimiter, RetryPolicy
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
from push.fake import RecordingGateway
from push.gateway import Gateway, RoutedSender, Router, Sender, send_many, send_one
from push.http import make_client, make_h1_client
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
from push.stores import (
    BreakerStore,
    FileTokenCache,
    MemoryBreakerStore,
    MemoryRateLimitStore,
    MemoryTokenCache,
    RateLimitStore,
    TokenCache,
)
from push.templates import TemplateSet, compose

__all__ = [
    "BreakerStore",
    "Channel",
    "CircuitBreaker",
    "CompositionError",
    "ConfigError",
    "CouponError",
    "CredentialsError",
    "Deliverer",
    "DeliveryResult",
    "Device",
    "FileTokenCache",
    "Gateway",
    "GatewayConfig",
    "InvalidMessageError",
    "MemoryBreakerStore",
    "MemoryRateLimitStore",
    "MemoryTokenCache",
    "Message",
    "OfferText",
    "Outcome",
    "PayloadTooLargeError",
    "Priority",
    "Purpose",
    "PushError",
    "RateLimit",
    "RateLimitStore",
    "RateLimiter",
    "RecordingGateway",
    "RetryPolicy",
    "RoutedSender",
    "Router",
    "Sender",
    "TemplateError",
    "TemplateSecurityError",
    "TemplateSet",
    "TokenCache",
    "UnsafeDestinationError",
    "WebPushSubscription",
    "compose",
    "fingerprint",
    "format_coupon",
    "make_client",
    "make_h1_client",
    "new_coupon",
    "open_gateways",
    "send_many",
    "send_one",
    "tracked_link",
    "validate_coupon",
]
