"""Local stand-ins for the real push services, for tests, benchmarks and demos.

Each server validates the wire format as strictly as the real service, answers with the
real error bodies, can be scripted (`server.script`: queued statuses, Retry-After,
latency, unregistered tokens) and records what it received (`server.received`). Start
one in-process with ``with serve_app(server) as base_url:``, or all of them in another
process with ``python -m push.testing`` (admin JSON at ``/_admin/*`` on each).
"""

from push.testing._server import GatewayServer, Script, Scripted, serve_app
from push.testing.apns import ApnsServer
from push.testing.fcm import FcmServer
from push.testing.tls import TestCertificates, make_certificates
from push.testing.webhook import WebhookReceiver, new_webhook_secret
from push.testing.webpush import WebPushService

__all__ = [
    "ApnsServer",
    "FcmServer",
    "GatewayServer",
    "Script",
    "Scripted",
    "TestCertificates",
    "WebPushService",
    "WebhookReceiver",
    "make_certificates",
    "new_webhook_secret",
    "serve_app",
]
