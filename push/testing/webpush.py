"""A local Web Push service (RFC 8030) that decrypts what it receives.

`subscribe()` creates a subscription as a browser would (a P-256 key pair and a 16-byte
auth secret; optionally bound to an application server key) and returns its
``PushSubscription`` JSON. Pushes are checked as push services do: VAPID
(``Authorization: vapid t=..., k=...``; ES256 JWT over ``aud`` = this origin, ``exp`` in
the future and at most 24 h ahead, ``sub`` a mailto:/https: contact; 401 otherwise; 403
when the key is not the one the subscription was made for), ``TTL`` present,
``Urgency`` and ``Topic`` well-formed, ``Content-Encoding: aes128gcm``, body at most
4096 bytes, and the payload must decrypt (RFC 8291) with the subscriber's keys.
Errors use autopush's JSON shape ``{"code", "errno", "error", "message"}``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import http_ece
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from push.testing._server import GatewayServer, Request, Response

__all__ = ["WebPushService"]

_PATH_RE = re.compile(r"^/push/([A-Za-z0-9_-]+)$")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_VAPID_RE = re.compile(r"^vapid\s+t=([^,\s]+)\s*,\s*k=([A-Za-z0-9_-]+=*)$")
_URGENCIES = {"very-low", "low", "normal", "high"}
_PHRASES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            410: "Gone", 413: "Payload Too Large", 429: "Too Many Requests",
            500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64url(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _error(
    status: int, errno: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    body = {
        "code": status,
        "errno": errno,
        "error": _PHRASES.get(status, "Error"),
        "message": message,
    }
    return Response.json(status, body, headers)


@dataclass
class _Subscriber:
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    server_key: str | None  # applicationServerKey the subscription is bound to


class WebPushService(GatewayServer):
    name = "webpush"

    def __init__(self) -> None:
        super().__init__()
        self._subscribers: dict[str, _Subscriber] = {}

    def subscribe(self, application_server_key: str | None = None) -> dict[str, Any]:
        """A new subscription (``PushSubscription.toJSON()`` shape) on this service."""
        key = ec.generate_private_key(ec.SECP256R1())
        auth = os.urandom(16)
        sub_id = uuid.uuid4().hex
        self._subscribers[sub_id] = _Subscriber(key, auth, application_server_key)
        public = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {
            "endpoint": f"{self.base_url}/push/{sub_id}",
            "keys": {"p256dh": _b64url(public), "auth": _b64url(auth)},
        }

    def _check_vapid(self, header: str, sub: _Subscriber) -> Response | None:
        match = _VAPID_RE.match(header.strip())
        if not match:
            return _error(401, 109, "Missing or malformed VAPID Authorization header")
        token, k = match.groups()
        try:
            raw = _unb64url(k)
            public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
            claims = jwt.decode(
                token,
                public_key,
                algorithms=["ES256"],
                audience=self.base_url,
                options={"require": ["aud", "exp", "sub"]},
            )
        except (jwt.PyJWTError, ValueError):
            return _error(401, 109, "Invalid VAPID JWT (signature, aud or exp)")
        if claims["exp"] > time.time() + 24 * 3600:
            return _error(401, 109, "VAPID exp is more than 24 hours in the future")
        if not str(claims["sub"]).startswith(("mailto:", "https://")):
            return _error(401, 109, "VAPID sub must be a mailto: or https: URL")
        if sub.server_key is not None and sub.server_key.rstrip("=") != k.rstrip("="):
            return _error(403, 109, "VAPID key does not match the subscription's key")
        return None

    async def handle(self, request: Request) -> Response:
        match = _PATH_RE.match(request.path)
        if not match:
            return _error(404, 102, "Unknown endpoint")
        if request.method != "POST":
            return _error(405, 101, "Method not allowed")
        sub_id = match.group(1)
        if sub_id in self.script.unregistered:
            self.record(kind="rejected", status=410, subscription=sub_id)
            return _error(410, 106, "Subscription is no longer valid")
        sub = self._subscribers.get(sub_id)
        if sub is None:
            return _error(404, 102, "Subscription not found")
        problem = self._check_vapid(request.headers.get("authorization", ""), sub)
        problem = problem or self._check_headers(request)
        if problem is not None:
            self.record(kind="rejected", status=problem.status, body=json.loads(problem.body))
            return problem
        if len(request.body) > 4096:
            return _error(413, 104, "Payload too large")
        try:
            plaintext = http_ece.decrypt(
                request.body, private_key=sub.private_key, auth_secret=sub.auth, version="aes128gcm"
            )
            payload = json.loads(plaintext)
        except Exception:  # http_ece raises bare ECEException/ValueError/InvalidTag
            self.record(kind="rejected", status=400, subscription=sub_id)
            return _error(400, 110, "Payload could not be decrypted")
        scripted = await self.take_scripted(request.path)
        if scripted is not None and scripted.status not in {200, 201}:
            headers = {"retry-after": scripted.retry_after} if scripted.retry_after else None
            self.record(kind="scripted", status=scripted.status, subscription=sub_id)
            return _error(scripted.status, 999, scripted.reason or "scripted", headers)
        location = f"{self.base_url}/m/{uuid.uuid4().hex}"
        self.record(
            kind="message",
            subscription=sub_id,
            headers={
                k: request.headers[k] for k in ("ttl", "urgency", "topic") if k in request.headers
            },
            salt=request.body[:16].hex(),
            sender_key=request.body[21:86].hex(),
            payload=payload,
        )
        return Response(201, b"", {"location": location, "ttl": request.headers["ttl"]})

    def _check_headers(self, request: Request) -> Response | None:
        h = request.headers
        if not h.get("ttl", "").isdigit():
            return _error(400, 111, "Missing or invalid TTL header")
        if h.get("urgency", "normal") not in _URGENCIES:
            return _error(400, 111, "Invalid Urgency header")
        if "topic" in h and not _TOPIC_RE.match(h["topic"]):
            return _error(400, 111, "Topic must be at most 32 base64url characters")
        if h.get("content-encoding") != "aes128gcm":
            return _error(400, 111, "Content-Encoding must be aes128gcm")
        return None
