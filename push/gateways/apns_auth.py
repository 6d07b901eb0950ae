"""APNs provider authentication tokens: ES256 JWTs shared by every sending process.

Apple wants one token per signing key reused for a while: refreshed at most once every
20 minutes (else 429 TooManyProviderTokenUpdates) and at least once an hour (else 403
ExpiredProviderToken). We mint ``{"alg": "ES256", "kid": key_id}.{"iss": team_id, "iat":
now}``, publish it in a shared `TokenCache` for `refresh_after_s` (default 40 minutes)
and keep a process-local copy, so the cache is read about once per refresh, not per send.
When several processes mint at once, `TokenCache.add` makes them all adopt one winner.

The shared entry is also the 20-minute floor: a token is only minted when the cache holds
none, and a token APNs calls expired leaves the cache only once it is 20 minutes old
(`invalidate`). A younger one called expired means our clock is off; a new token would
not cure that, and APNs would refuse it (TooManyProviderTokenUpdates).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from push.errors import ConfigError
from push.redact import fingerprint
from push.stores import MemoryTokenCache, TokenCache

__all__ = ["ApnsKey", "ProviderTokens"]

MIN_REFRESH_S = 20 * 60
MAX_AGE_S = 60 * 60


@dataclass(frozen=True)
class ApnsKey:
    """A token-signing key from Apple's developer account (.p8, PKCS#8 P-256)."""

    key_id: str
    team_id: str
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)

    @classmethod
    def from_pem(cls, pem: bytes | str, *, key_id: str, team_id: str) -> ApnsKey:
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError("APNs key is not a PEM private key") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ConfigError("APNs key must be a P-256 (ES256) key")
        if not key_id or not team_id:
            raise ConfigError("APNs key id and team id are required")
        return cls(key_id=key_id, team_id=team_id, private_key=key)

    @classmethod
    def from_file(cls, path: Path | str, *, key_id: str, team_id: str) -> ApnsKey:
        try:
            pem = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read APNs key file: {exc.strerror}") from exc
        return cls.from_pem(pem, key_id=key_id, team_id=team_id)

    @property
    def cache_key(self) -> str:
        """Identifies the key without revealing it (team and key ids are not secret)."""
        return f"apns:{self.team_id}:{self.key_id}"

    def mint(self, now: float) -> str:
        """A fresh provider token issued at `now`."""
        return jwt.encode(
            {"iss": self.team_id, "iat": int(now)},
            self.private_key,
            algorithm="ES256",
            headers={"kid": self.key_id, "typ": None},  # Apple's header: alg and kid only
        )


def _issued_at(token: str) -> float:
    try:
        return float(jwt.decode(token, options={"verify_signature": False})["iat"])
    except (jwt.PyJWTError, KeyError, TypeError, ValueError):
        return 0.0


class ProviderTokens:
    """`await token()` -> the shared provider JWT for `key`, minted at most every
    `refresh_after_s` (20-60 minutes) across all processes sharing `cache`."""

    def __init__(
        self,
        key: ApnsKey,
        cache: TokenCache | None = None,
        *,
        refresh_after_s: float = 40 * 60,
    ) -> None:
        if not MIN_REFRESH_S <= refresh_after_s <= MAX_AGE_S - 5 * 60:
            raise ConfigError("APNs token refresh must be between 20 and 55 minutes")
        self.key = key
        self.credential_key = f"apns:{fingerprint(key.cache_key)}"
        self._cache = cache or MemoryTokenCache()
        self._refresh_after = refresh_after_s
        self._local: tuple[str, float] | None = None  # token, iat
        self._lock = asyncio.Lock()
        self.minted = 0

    def _fresh(self, now: float) -> str | None:
        if self._local and now - self._local[1] < self._refresh_after:
            return self._local[0]
        return None

    async def token(self, now: float | None = None) -> str:
        current = time.time() if now is None else now
        token = self._fresh(current)
        if token:
            return token
        async with self._lock:
            token = self._fresh(current)
            if token:
                return token
            shared = await self._cache.get(self.key.cache_key)
            if shared and current - _issued_at(shared) < self._refresh_after:
                token = shared
            else:
                if shared:
                    await self._cache.discard(self.key.cache_key, shared)
                minted = self.key.mint(current)
                self.minted += 1
                ttl = max(1.0, self._refresh_after)
                token = await self._cache.add(self.key.cache_key, minted, ttl)
            self._local = (token, _issued_at(token))
            return token

    async def invalidate(self, token: str, now: float | None = None) -> float:
        """APNs called `token` expired: drop it, locally and from the shared cache, so the
        next `token()` mints a new one, unless it was issued less than 20 minutes ago
        (module doc). Returns the seconds until a new token may be minted (0 if now)."""
        current = time.time() if now is None else now
        wait = _issued_at(token) + MIN_REFRESH_S - current
        if wait > 0:
            return wait
        if self._local and self._local[0] == token:
            self._local = None
        await self._cache.discard(self.key.cache_key, token)
        return 0.0
