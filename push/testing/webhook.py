"""A local webhook receiver that verifies Standard Webhooks signatures.

Accepts ``POST`` on any path with a JSON body; checks ``webhook-id``,
``webhook-timestamp`` (within 5 minutes) and that one ``v1`` signature matches one of
its secrets; answers 401 otherwise. Scripted 3xx answers redirect to the cloud metadata
address (to prove the sender does not follow). Records payloads and duplicate ids.
"""

from __future__ import annotations

import base64
import json
import secrets as _secrets
from collections.abc import Sequence

from push.gateways.webhook import decode_secret, verify_webhook
from push.testing._server import GatewayServer, Request, Response

__all__ = ["WebhookReceiver", "new_webhook_secret"]

METADATA_URL = "http://169.254.169.254/latest/meta-data/"


def new_webhook_secret() -> str:
    """A fresh ``whsec_`` secret (32 random bytes)."""
    return "whsec_" + base64.b64encode(_secrets.token_bytes(32)).decode()


class WebhookReceiver(GatewayServer):
    name = "webhook"

    def __init__(self, secrets: Sequence[str] | None = None) -> None:
        super().__init__()
        self.secrets = list(secrets) if secrets else [new_webhook_secret()]
        self._keys = [decode_secret(s) for s in self.secrets]
        self.seen_ids: dict[str, int] = {}

    async def handle(self, request: Request) -> Response:
        if request.method != "POST":
            return Response.json(405, {"error": "method not allowed"})
        scripted = await self.take_scripted(request.path)
        if scripted is not None and 300 <= scripted.status < 400:
            self.record(kind="scripted", status=scripted.status, path=request.path)
            return Response(scripted.status, b"", {"location": METADATA_URL})
        why = verify_webhook(request.headers, request.body, self._keys)
        if why is not None:
            self.record(kind="rejected", status=401, path=request.path, why=why)
            return Response.json(401, {"error": why})
        if not request.headers.get("content-type", "").startswith("application/json"):
            return Response.json(415, {"error": "expected application/json"})
        try:
            payload = json.loads(request.body)
        except ValueError:
            return Response.json(400, {"error": "body is not JSON"})
        if scripted is not None and scripted.status != 200:
            headers = {"retry-after": scripted.retry_after} if scripted.retry_after else None
            self.record(kind="scripted", status=scripted.status, path=request.path)
            return Response.json(scripted.status, {"error": "scripted"}, headers)
        msg_id = request.headers["webhook-id"]
        self.seen_ids[msg_id] = self.seen_ids.get(msg_id, 0) + 1
        self.record(
            kind="message",
            path=request.path,
            webhook_id=msg_id,
            duplicate=self.seen_ids[msg_id] > 1,
            payload=payload,
        )
        return Response(204)
