"""All four local gateways at once, with credentials written to disk, for demos and the
worker's end-to-end tests (which run them in another process).

``python -m push.testing serve --state-dir DIR`` (or ``pushrec gateways serve``) starts
them on 127.0.0.1, writes ``DIR/gateways.json`` and prints the same JSON as one line on
stdout, then serves until SIGTERM/SIGINT. The JSON holds ``env`` (the ``PUSHREC_*``
variables that point pushrec at these gateways), ``targets`` (a device token for each
channel: FCM and APNs tokens, a Web Push subscription file, a webhook URL) and ``admin``
(each server's base URL: ``GET {admin}/_admin/received`` lists what it got).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from push.gateways.vapid import VapidKey
from push.testing._server import KEEP_ALIVE_S, serve_app
from push.testing.apns import ApnsServer
from push.testing.fcm import FcmServer
from push.testing.webhook import WebhookReceiver
from push.testing.webpush import WebPushService

__all__ = ["local_gateways", "main"]

TOPIC = "com.example.pushrec"
SUBJECT = "mailto:ops@pushrec.invalid"


@contextmanager
def local_gateways(
    state_dir: Path,
    *,
    latency_ms: float = 0.0,
    host: str = "127.0.0.1",
    keep_alive_s: float = KEEP_ALIVE_S,
) -> Iterator[dict[str, Any]]:
    """Start the four servers on `host`, write their credentials under `state_dir`, yield
    the state (see module doc); stop them on exit. Idle connections are closed after
    `keep_alive_s` (`serve_app`)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fcm, apns, webpush, webhook = (
        FcmServer(),
        ApnsServer(TOPIC),
        WebPushService(),
        WebhookReceiver(),
    )
    with ExitStack() as stack:
        for server in (fcm, apns, webpush, webhook):
            stack.enter_context(serve_app(server, host=host, keep_alive_s=keep_alive_s))
            server.script.latency_s = latency_ms / 1000
        account = state_dir / "fcm-service-account.json"
        account.write_text(json.dumps(fcm.service_account()))
        pem, key_id, team_id = apns.signing_key()
        apns_key = state_dir / "apns-key.p8"
        apns_key.write_text(pem)
        vapid = VapidKey.generate(SUBJECT)
        vapid_pem = state_dir / "vapid-private.pem"
        vapid_pem.write_bytes(vapid.private_pem())
        subscription = state_dir / "webpush-subscription.json"
        subscription.write_text(json.dumps(webpush.subscribe(vapid.public_key_b64)))
        for path in (account, apns_key, vapid_pem):
            path.chmod(0o600)
        state = {
            "env": {
                "PUSHREC_FCM_URL": fcm.base_url,
                "PUSHREC_FCM_CREDENTIALS": str(account),
                "PUSHREC_FCM_PROJECT_ID": fcm.project_id,
                "PUSHREC_APNS_URL": apns.base_url,
                "PUSHREC_APNS_KEY_FILE": str(apns_key),
                "PUSHREC_APNS_KEY_ID": key_id,
                "PUSHREC_APNS_TEAM_ID": team_id,
                "PUSHREC_APNS_TOPIC": TOPIC,
                "PUSHREC_VAPID_PRIVATE_KEY": str(vapid_pem),
                "PUSHREC_VAPID_SUBJECT": SUBJECT,
                "PUSHREC_WEBHOOK_SECRET": webhook.secrets[0],
                "PUSHREC_DESTINATION_ALLOWED_HOSTS": host,
            },
            "targets": {
                "fcm": "fcm-demo-" + uuid.uuid4().hex,
                "apns": uuid.uuid4().hex + uuid.uuid4().hex,
                "webpush": str(subscription),
                "webhook": f"{webhook.base_url}/hooks/pushrec",
            },
            "admin": {
                "fcm": fcm.base_url,
                "apns": apns.base_url,
                "webpush": webpush.base_url,
                "webhook": webhook.base_url,
            },
        }
        (state_dir / "gateways.json").write_text(json.dumps(state, indent=2))
        yield state


def serve_forever(
    state_dir: Path, *, latency_ms: float = 0.0, keep_alive_s: float = KEEP_ALIVE_S
) -> int:
    """Run `local_gateways` until SIGTERM or SIGINT; print the state as one JSON line."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with local_gateways(state_dir, latency_ms=latency_ms, keep_alive_s=keep_alive_s) as state:
        print(json.dumps(state), flush=True)
        stop.wait()
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, required=True, help="where to write credentials")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="injected per request")
    parser.add_argument(
        "--keep-alive-s",
        type=float,
        default=KEEP_ALIVE_S,
        help="idle connections closed after this",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m push.testing")
    sub = parser.add_subparsers(dest="command", required=True)
    add_arguments(sub.add_parser("serve", help="run the four local gateways"))
    args = parser.parse_args(argv)
    return serve_forever(args.state_dir, latency_ms=args.latency_ms, keep_alive_s=args.keep_alive_s)


if __name__ == "__main__":
    sys.exit(main())
