"""Every exception `push` raises, sorted by what the caller must do.

Gateway answers are not exceptions: `send()` returns a `DeliveryResult` (see `result.py`).
Exceptions are for problems found *before* anything is sent, or for misconfiguration::

    PushError                       base; never raised itself
    ├── ConfigError                 settings or key files unusable: fix the deployment
    ├── CompositionError            this message can never be sent as it is: drop it
    │   ├── TemplateError           a template fails to parse or render
    │   │   └── TemplateSecurityError   a template reached for Python internals
    │   ├── PayloadTooLargeError    over the channel's limit even after shortening text
    │   └── InvalidMessageError     a field is malformed (bad token shape, bad URL, ...)
    ├── CouponError                 a coupon code is malformed or fails its check character
    ├── UnsafeDestinationError      a URL from input fails the destination guard: drop it
    ├── DestinationLookupError      its host cannot be resolved right now: retry
    └── CredentialsError            a gateway credential cannot be minted (OAuth, JWT)

Foreign exceptions (httpx, jinja2, cryptography, google-auth) are translated at the edge
with ``raise ... from exc``; callers never need to catch them.
"""

from __future__ import annotations

__all__ = [
    "CompositionError",
    "ConfigError",
    "CouponError",
    "CredentialsError",
    "DestinationLookupError",
    "InvalidMessageError",
    "PayloadTooLargeError",
    "PushError",
    "TemplateError",
    "TemplateSecurityError",
    "UnsafeDestinationError",
]


class PushError(Exception):
    """Base of every exception raised by `push`."""


class ConfigError(PushError):
    """A setting, key file or credential file is missing or malformed."""


class CompositionError(PushError):
    """The message cannot be turned into a request; retrying will not help."""


class TemplateError(CompositionError):
    """A template failed to parse or render (undefined variable, syntax error, ...)."""


class TemplateSecurityError(TemplateError):
    """A template tried to reach Python internals; the sandbox refused it."""


class PayloadTooLargeError(CompositionError):
    """The payload exceeds the channel limit even after shortening its text."""

    def __init__(self, channel: str, size: int, limit: int) -> None:
        super().__init__(f"{channel} payload is {size} bytes, over the {limit}-byte limit")
        self.channel = channel
        self.size = size
        self.limit = limit


class InvalidMessageError(CompositionError):
    """A message field is malformed for its channel."""


class CouponError(PushError):
    """A coupon code is malformed or its check character does not match."""


class UnsafeDestinationError(PushError):
    """A URL from input (webhook URL, Web Push endpoint) failed the destination guard
    (`push.ssrf`): its scheme, host or resolved address is refused, or its name does not
    exist. Permanent."""


class DestinationLookupError(PushError):
    """The destination's host could not be resolved now (``EAI_AGAIN``, a lookup timeout).
    Transient: retry later."""


class CredentialsError(PushError):
    """A gateway credential (OAuth token, provider JWT, VAPID key) cannot be produced.

    `transient` is True when the cause was the network (the token endpoint was
    unreachable), not a rejected credential.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
