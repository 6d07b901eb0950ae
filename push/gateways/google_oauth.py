"""FCM's OAuth2 access token, minted by google-auth from a service-account JSON.

google-auth signs the JWT-bearer assertion and posts it to the JSON's own `token_uri`
(so a local token endpoint works in tests). Its transport seam is a small sync
interface; we adapt a sync `httpx.Client` to it and refresh in a worker thread, at most
one refresh at a time per process, before the token's expiry (google-auth treats a token
as stale ~4 minutes early).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import google.auth.exceptions
import google.auth.transport
import httpx
from google.oauth2 import service_account

from push.errors import ConfigError, CredentialsError
from push.http import ssl_context
from push.redact import fingerprint

__all__ = ["FCM_SCOPE", "ServiceAccountTokens"]

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


class _Response(google.auth.transport.Response):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def data(self) -> bytes:
        return self._response.content


class _HttpxRequest(google.auth.transport.Request):
    """google-auth's transport interface over a sync `httpx.Client` (owned by the caller)."""

    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> _Response:
        try:
            response = self._client.request(
                method, url, content=body, headers=dict(headers or {}), timeout=timeout or 10.0
            )
        except httpx.HTTPError as exc:
            raise google.auth.exceptions.TransportError(  # type: ignore[no-untyped-call]
                f"token endpoint: {exc}"
            ) from exc
        return _Response(response)


class ServiceAccountTokens:
    """Access tokens for one service account; `await token()` returns a valid one.

    `project_id` comes from the JSON. `invalidate()` forces a refresh (after a 401).
    """

    def __init__(self, info: Mapping[str, Any], *, ca_bundle: Path | str | None = None) -> None:
        try:
            self._credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                dict(info), scopes=[FCM_SCOPE]
            )
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"service account JSON is invalid: {exc}") from exc
        self.project_id: str | None = info.get("project_id")
        self.key = fingerprint(str(info.get("client_email", "")) + str(info.get("private_key_id")))
        self._ca_bundle = ca_bundle
        self._lock = asyncio.Lock()

    @classmethod
    def from_file(
        cls, path: Path | str, *, ca_bundle: Path | str | None = None
    ) -> ServiceAccountTokens:
        try:
            info = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read FCM credentials file: {exc}") from exc
        return cls(info, ca_bundle=ca_bundle)

    async def token(self) -> str:
        """A valid access token, refreshing it first when it is missing or near expiry."""
        if self._credentials.valid:
            return str(self._credentials.token)
        async with self._lock:
            if not self._credentials.valid:
                try:
                    await asyncio.to_thread(self._refresh)
                except google.auth.exceptions.GoogleAuthError as exc:
                    transient = isinstance(exc, google.auth.exceptions.TransportError) or bool(
                        getattr(exc, "retryable", False)
                    )
                    raise CredentialsError(
                        f"FCM OAuth token refresh failed: {type(exc).__name__}", transient=transient
                    ) from exc
            return str(self._credentials.token)

    def _refresh(self) -> None:
        # Runs in a worker thread about once an hour: a short-lived client keeps no
        # sockets open between refreshes and needs no closing by our caller.
        with httpx.Client(verify=ssl_context(self._ca_bundle), trust_env=False) as http:
            self._credentials.refresh(_HttpxRequest(http))

    def invalidate(self) -> None:
        """Forget the current token (after a 401): the next `token()` refreshes."""
        self._credentials.token = None
