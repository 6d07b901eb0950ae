"""A local FCM HTTP v1 endpoint plus the OAuth2 token endpoint its service account uses.

`FcmServer.service_account()` mints a service-account JSON whose `token_uri` points here;
google-auth then exchanges a signed JWT assertion (RS256, checked against the account's
public key) for an access token that ``messages:send`` requires. Requests are validated
as FCM does (fields, types, reserved data keys, 4096-byte size, token shape) and rejected
with FCM's error bodies; scripted statuses map to FCM's canonical errors. Like FCM it
speaks HTTP/1.1 and HTTP/2 (h2c, or ALPN over TLS); each accepted message's record
names the version it came over (``http_version``: ``"1.1"`` or ``"2"``).
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import time
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from push.testing._server import GatewayServer, Request, Response

__all__ = ["FcmServer"]

_SEND_RE = re.compile(r"^/v1/projects/([^/]+)/messages:send$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_:\-]{20,4096}$")
_TTL_RE = re.compile(r"^\d+(\.\d{1,9})?s$")
_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
_MESSAGE_FIELDS = {
    "name", "data", "notification", "android", "webpush", "apns", "fcm_options",
    "token", "topic", "condition",
}  # fmt: skip
_NOTIFICATION_FIELDS = {"title", "body", "image"}
_ANDROID_FIELDS = {
    "collapse_key", "priority", "ttl", "restricted_package_name", "data", "notification",
    "fcm_options", "direct_boot_ok",
}  # fmt: skip
_STATUS_NAMES = {
    400: ("INVALID_ARGUMENT", "INVALID_ARGUMENT"),
    401: ("UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR"),
    403: ("PERMISSION_DENIED", "SENDER_ID_MISMATCH"),
    404: ("NOT_FOUND", "UNREGISTERED"),
    429: ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"),
    500: ("INTERNAL", "INTERNAL"),
    503: ("UNAVAILABLE", "UNAVAILABLE"),
}


def _error(
    status: int,
    message: str,
    *,
    error_code: str | None = None,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    grpc_status = _STATUS_NAMES.get(status, ("UNKNOWN", ""))[0]
    details: list[dict[str, Any]] = []
    if error_code:
        details.append({"@type": _FCM_ERROR, "errorCode": error_code})
    if field:
        violation = {"field": field, "description": message}
        details.append({"@type": _BAD_REQUEST, "fieldViolations": [violation]})
    body = {"error": {"code": status, "message": message, "status": grpc_status}}
    if details:
        body["error"]["details"] = details
    return Response.json(status, body, headers)


class FcmServer(GatewayServer):
    name = "fcm"

    def __init__(self, project_id: str = "pushrec-local", *, token_lifetime_s: int = 3600) -> None:
        super().__init__()
        self.project_id = project_id
        self.token_lifetime_s = token_lifetime_s
        self._accounts: dict[str, Any] = {}  # client_email -> public key
        self._tokens: dict[str, float] = {}  # access token -> expiry
        self._ids = itertools.count(1)
        self.tokens_issued = 0

    # --- credentials -----------------------------------------------------------------
    def service_account(self, client_email: str = "pushrec@pushrec-local.iam") -> dict[str, Any]:
        """A fresh service-account JSON (new RSA key) trusted by this server."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        self._accounts[client_email] = key.public_key()
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": secrets.token_hex(20),
            "private_key": pem,
            "client_email": client_email,
            "client_id": "1",
            "token_uri": f"{self.base_url}/token",
        }

    def revoke_access_tokens(self) -> None:
        """Forget every access token issued so far (the next sends get 401)."""
        self._tokens.clear()

    def _issue_token(self, request: Request) -> Response:
        form = parse_qs(request.body.decode())
        grant = form.get("grant_type", [""])[0]
        assertion = form.get("assertion", [""])[0]
        if grant != "urn:ietf:params:oauth:grant-type:jwt-bearer" or not assertion:
            return Response.json(400, {"error": "unsupported_grant_type"})
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
            public_key = self._accounts[unverified["iss"]]
            claims = jwt.decode(
                assertion,
                public_key,
                algorithms=["RS256"],
                # google-auth always names Google's endpoint as the audience, wherever
                # token_uri points; accept that and our own URL.
                audience=[f"{self.base_url}/token", "https://oauth2.googleapis.com/token"],
                options={"require": ["iss", "aud", "iat", "exp", "scope"]},
            )
        except (jwt.PyJWTError, KeyError):
            return Response.json(
                400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
            )
        if claims["exp"] - claims["iat"] > 3600 or "firebase.messaging" not in claims["scope"]:
            return Response.json(400, {"error": "invalid_scope"})
        token = "ya29.local-" + secrets.token_urlsafe(24)
        self._tokens[token] = time.time() + self.token_lifetime_s
        self.tokens_issued += 1
        self.record(kind="token", client_email=claims["iss"])
        return Response.json(
            200,
            {"access_token": token, "expires_in": self.token_lifetime_s, "token_type": "Bearer"},
        )

    # --- messages:send ---------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        if request.path == "/token" and request.method == "POST":
            return self._issue_token(request)
        match = _SEND_RE.match(request.path)
        if not match or request.method != "POST":
            return _error(404, "Requested entity was not found.")
        auth = request.headers.get("authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
        if self._tokens.get(token, 0) < time.time():
            return _error(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access token.",
            )
        if match.group(1) != self.project_id:
            return _error(403, f"Permission denied on resource project {match.group(1)}.")
        try:
            payload = request.json()
        except ValueError:
            return _error(400, "Invalid JSON payload received.", field="")
        problem = self._validate(payload, len(request.body))
        if problem is not None:
            self.record(kind="rejected", status=problem.status, body=payload)
            return problem
        message = payload["message"]
        target = message.get("token")
        scripted = await self.take_scripted(target)
        if scripted is not None and scripted.status != 200:
            _, code = _STATUS_NAMES.get(scripted.status, ("UNKNOWN", "UNSPECIFIED_ERROR"))
            headers = {"retry-after": scripted.retry_after} if scripted.retry_after else None
            self.record(kind="scripted", status=scripted.status, message=message)
            return _error(
                scripted.status,
                "scripted failure",
                error_code=scripted.reason or code,
                headers=headers,
            )
        if target in self.script.unregistered:
            self.record(kind="rejected", status=404, message=message)
            return _error(404, "Requested entity was not found.", error_code="UNREGISTERED")
        name = f"projects/{self.project_id}/messages/0:{next(self._ids)}%{secrets.token_hex(8)}"
        self.record(kind="message", name=name, message=message, http_version=request.http_version)
        return Response.json(200, {"name": name})

    def _validate(self, payload: Any, size: int) -> Response | None:
        if not isinstance(payload, dict) or not isinstance(payload.get("message"), dict):
            return _error(
                400, "Invalid JSON payload received. 'message' is required.", field="message"
            )
        unknown = set(payload) - {"message", "validate_only"}
        if unknown:
            name = sorted(unknown)[0]
            return _error(
                400,
                f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.',
                field=name,
            )
        message = payload["message"]
        for name in message:
            if name not in _MESSAGE_FIELDS:
                return _error(
                    400,
                    f"Invalid JSON payload received. Unknown name \"{name}\" at 'message': "
                    "Cannot find field.",
                    field=f"message.{name}",
                )
        targets = [k for k in ("token", "topic", "condition") if k in message]
        if len(targets) != 1:
            return _error(
                400, "Exactly one of token, topic or condition must be set.", field="message"
            )
        for i, (key, value) in enumerate((message.get("data") or {}).items()):
            if not isinstance(value, str):
                text = (
                    f"Invalid value at 'message.data[{i}].value' (TYPE_STRING), {json.dumps(value)}"
                )
                return _error(400, text, field=f"message.data[{i}].value")
            if key in {"from", "notification", "message_type"} or key.startswith(("google", "gcm")):
                return _error(400, f"Invalid data payload key: {key}", field="message.data")
        notification = message.get("notification") or {}
        for key, value in notification.items():
            if key not in _NOTIFICATION_FIELDS or not isinstance(value, str):
                return _error(
                    400, f"Invalid notification field {key}", field=f"message.notification.{key}"
                )
        android = message.get("android") or {}
        for key in android:
            if key not in _ANDROID_FIELDS:
                return _error(
                    400,
                    f"Unknown name \"{key}\" at 'message.android'",
                    field=f"message.android.{key}",
                )
        if "ttl" in android and not _TTL_RE.match(str(android["ttl"])):
            return _error(
                400,
                "Invalid value at 'message.android.ttl' "
                "(type.googleapis.com/google.protobuf.Duration)",
                field="message.android.ttl",
            )
        if android.get("priority", "NORMAL") not in {"NORMAL", "HIGH"}:
            return _error(
                400, "Invalid value at 'message.android.priority'", field="message.android.priority"
            )
        apns_headers = (message.get("apns") or {}).get("headers") or {}
        if len(str(apns_headers.get("apns-collapse-id", "")).encode()) > 64:
            return _error(400, "apns-collapse-id exceeds 64 bytes", field="message.apns.headers")
        webpush_headers = (message.get("webpush") or {}).get("headers") or {}
        if any(not isinstance(v, str) for v in {**apns_headers, **webpush_headers}.values()):
            return _error(400, "Header values must be strings", field="message.webpush.headers")
        if len(json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()) > 4096:
            return _error(400, "Message is too big", error_code="INVALID_ARGUMENT")
        token = message.get("token")
        if token is not None and (not isinstance(token, str) or not _TOKEN_RE.match(token)):
            return _error(
                400,
                "The registration token is not a valid FCM registration token",
                error_code="INVALID_ARGUMENT",
            )
        return None
