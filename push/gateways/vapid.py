"""VAPID (RFC 8292): the application server identifies itself to push services.

``Authorization: vapid t=<JWT>, k=<base64url uncompressed P-256 public key>``, the JWT
being ES256 over ``{"aud": <push service origin>, "exp": <= 24 h ahead, "sub": mailto:
or https: contact}``. One JWT per push-service origin is reused until an hour before it
expires (12 h lifetime), so signing costs nothing per message; at most `ORIGINS_KEPT`
origins are remembered (least recently used go first).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from push.errors import ConfigError
from push.lru import LruCache
from push.redact import fingerprint

__all__ = ["ORIGINS_KEPT", "VapidKey", "b64url", "origin_of"]

LIFETIME_S = 12 * 3600
RENEW_BEFORE_S = 3600
ORIGINS_KEPT = 1024
"""Push service origins remembered per process (JWTs here, route keys in `webpush.py`):
real push services are a handful, but every endpoint a shopper registers names one, so
the caches are bounded; an evicted origin costs one ES256 signature or fingerprint."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of `url` (the VAPID ``aud``)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class VapidKey:
    """Our VAPID key pair and contact (`subject`: ``mailto:`` or ``https:`` URL)."""

    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    subject: str
    _jwts: LruCache[str, tuple[str, float]] = field(
        default_factory=lambda: LruCache(ORIGINS_KEPT), repr=False
    )

    def __post_init__(self) -> None:
        if self.private_key.curve.name != "secp256r1":
            raise ConfigError("VAPID key must be P-256")
        if not self.subject.startswith(("mailto:", "https://")):
            raise ConfigError("VAPID subject must be a mailto: or https: URL")
        raw = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.public_key_b64 = b64url(raw)
        self.credential_key = "vapid:" + fingerprint(raw)

    @classmethod
    def from_pem(cls, pem: bytes | str, subject: str) -> VapidKey:
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError("VAPID key is not a PEM private key") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError("VAPID key must be an EC (P-256) key")
        return cls(key, subject)

    @classmethod
    def from_file(cls, path: Path | str, subject: str) -> VapidKey:
        try:
            return cls.from_pem(Path(path).read_bytes(), subject)
        except OSError as exc:
            raise ConfigError(f"cannot read VAPID key file: {exc.strerror}") from exc

    @classmethod
    def generate(cls, subject: str) -> VapidKey:
        return cls(ec.generate_private_key(ec.SECP256R1()), subject)

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def authorization(self, endpoint: str, now: float | None = None) -> str:
        """The ``Authorization`` header value for a request to `endpoint`."""
        current = time.time() if now is None else now
        audience = origin_of(endpoint)
        cached = self._jwts.get(audience)
        if cached is None or cached[1] - current < RENEW_BEFORE_S:
            exp = int(current) + LIFETIME_S
            token = jwt.encode(
                {"aud": audience, "exp": exp, "sub": self.subject},
                self.private_key,
                algorithm="ES256",
                headers={"typ": "JWT"},
            )
            cached = (token, float(exp))
            self._jwts.put(audience, cached)
        return f"vapid t={cached[0]}, k={self.public_key_b64}"
