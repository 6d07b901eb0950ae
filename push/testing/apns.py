"""A local APNs provider API over HTTP/2 (cleartext prior knowledge, or TLS).

Validates as APNs does: HTTP/2 only, ``POST /3/device/<hex>``, an ES256 provider token
signed by a trusted key (``kid``), issued by its team, younger than an hour, and not
replaced within 20 minutes of the previous one (429 TooManyProviderTokenUpdates); the
required headers and their formats; a JSON body with ``aps`` of at most 4096 bytes.
Answers with APNs' ``{"reason": ...}`` bodies (410 with ``timestamp``), echoes or
assigns ``apns-id``.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from push.testing._server import GatewayServer, Request, Response

__all__ = ["ApnsServer"]

_PATH_RE = re.compile(r"^/3/device/([^/]*)$")
_TOKEN_RE = re.compile(r"^[0-9a-fA-F]{64,200}$")
_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
_PUSH_TYPES = {
    "alert", "background", "location", "voip", "complication", "fileprovider", "mdm",
    "liveactivity", "pushtotalk", "widgets", "controls",
}  # fmt: skip
_DEFAULT_REASONS = {
    400: "BadDeviceToken",
    403: "InvalidProviderToken",
    404: "BadPath",
    405: "MethodNotAllowed",
    410: "Unregistered",
    413: "PayloadTooLarge",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}


def _reject(status: int, reason: str, apns_id: str, **extra: Any) -> Response:
    return Response.json(status, {"reason": reason, **extra}, {"apns-id": apns_id})


class ApnsServer(GatewayServer):
    name = "apns"

    def __init__(
        self, topic: str = "com.example.shop", *, enforce_token_updates: bool = True
    ) -> None:
        super().__init__()
        self.topic = topic
        self.enforce_token_updates = enforce_token_updates
        self._keys: dict[str, tuple[str, Any]] = {}  # kid -> (team, public key)
        self._current: dict[str, tuple[str, int]] = {}  # kid -> (token, iat) in use
        self.provider_tokens_seen: set[str] = set()  # each token APNs took as new

    def reset(self) -> None:
        """Also forget the tokens seen (keys keep their 20-minute memory, as APNs does)."""
        super().reset()
        self.provider_tokens_seen.clear()

    def signing_key(
        self, team_id: str = "TEAM123456", key_id: str | None = None
    ) -> tuple[str, str, str]:
        """A new trusted P-256 key: ``(pem, key_id, team_id)``, pem being the .p8 content."""
        key = ec.generate_private_key(ec.SECP256R1())
        kid = key_id or uuid.uuid4().hex[:10].upper()
        self._keys[kid] = (team_id, key.public_key())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return pem, kid, team_id

    def _check_token(self, authorization: str, apns_id: str) -> Response | None:
        if not authorization.lower().startswith("bearer "):
            return _reject(403, "MissingProviderToken", apns_id)
        token = authorization[7:].strip()
        try:
            header = jwt.get_unverified_header(token)
            team, public_key = self._keys[header["kid"]]
            if header.get("alg") != "ES256":
                raise jwt.InvalidAlgorithmError("not ES256")
            claims = jwt.decode(
                token,
                public_key,
                algorithms=["ES256"],
                issuer=team,
                options={"require": ["iss", "iat"], "verify_iat": False},
            )
        except (jwt.PyJWTError, KeyError):
            return _reject(403, "InvalidProviderToken", apns_id)
        iat = int(claims["iat"])
        if time.time() - iat > 3600:
            return _reject(403, "ExpiredProviderToken", apns_id)
        kid = header["kid"]
        previous = self._current.get(kid)
        if previous is None or previous[0] != token:
            if (
                self.enforce_token_updates
                and previous is not None
                and iat >= previous[1]
                and iat - previous[1] < 20 * 60
            ):
                return _reject(429, "TooManyProviderTokenUpdates", apns_id)
            self._current[kid] = (token, iat)
            self.provider_tokens_seen.add(token)
        return None

    async def handle(self, request: Request) -> Response:
        apns_id = request.headers.get("apns-id") or str(uuid.uuid4())
        if request.http_version != "2":
            return Response(505, b"HTTP/2 required")
        match = _PATH_RE.match(request.path)
        if not match:
            return _reject(404, "BadPath", apns_id)
        if request.method != "POST":
            return _reject(405, "MethodNotAllowed", apns_id)
        if "apns-id" in request.headers and not _UUID_RE.match(request.headers["apns-id"]):
            return _reject(400, "BadMessageId", apns_id)
        problem = self._check_token(request.headers.get("authorization", ""), apns_id)
        if problem is not None:
            self.record(kind="rejected", status=problem.status, body=json.loads(problem.body))
            return problem
        problem = self._check_headers(request, apns_id)
        if problem is not None:
            self.record(kind="rejected", status=problem.status, body=json.loads(problem.body))
            return problem
        device = match.group(1)
        if not device:
            return _reject(400, "MissingDeviceToken", apns_id)
        if not _TOKEN_RE.match(device):
            return _reject(400, "BadDeviceToken", apns_id)
        if not request.body:
            return _reject(400, "PayloadEmpty", apns_id)
        if len(request.body) > 4096:
            return _reject(413, "PayloadTooLarge", apns_id)
        try:
            payload = json.loads(request.body)
        except ValueError:
            return _reject(400, "BadPayload", apns_id)
        if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
            return _reject(400, "BadPayload", apns_id)
        scripted = await self.take_scripted(device)
        if scripted is not None and scripted.status != 200:
            reason = scripted.reason or _DEFAULT_REASONS.get(scripted.status, "InternalServerError")
            extra: dict[str, Any] = {}
            if scripted.status == 410:
                extra["timestamp"] = int(time.time() * 1000)
            response = _reject(scripted.status, reason, apns_id, **extra)
            if scripted.retry_after:
                response.headers["retry-after"] = scripted.retry_after
            self.record(kind="scripted", status=scripted.status, device=device)
            return response
        if device in self.script.unregistered:
            self.record(kind="rejected", status=410, device=device)
            return _reject(410, "Unregistered", apns_id, timestamp=self.script.unregistered[device])
        headers = {k: v for k, v in request.headers.items() if k.startswith("apns-")}
        self.record(kind="message", device=device, headers=headers, payload=payload)
        return Response(200, b"", {"apns-id": apns_id, "apns-unique-id": str(uuid.uuid4())})

    def _check_headers(self, request: Request, apns_id: str) -> Response | None:
        h = request.headers
        topic = h.get("apns-topic")
        if not topic:
            return _reject(400, "MissingTopic", apns_id)
        if topic != self.topic:
            return _reject(400, "TopicDisallowed", apns_id)
        push_type = h.get("apns-push-type")
        if push_type not in _PUSH_TYPES:
            return _reject(400, "InvalidPushType", apns_id)
        priority = h.get("apns-priority", "10")
        if priority not in {"10", "5", "1"} or (push_type == "background" and priority != "5"):
            return _reject(400, "BadPriority", apns_id)
        if not h.get("apns-expiration", "0").isdigit():
            return _reject(400, "BadExpirationDate", apns_id)
        if len(h.get("apns-collapse-id", "").encode()) > 64:
            return _reject(400, "BadCollapseId", apns_id)
        return None
