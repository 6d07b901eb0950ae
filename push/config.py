"""Assembling the gateways from plain configuration values.

`GatewayConfig` holds what the worker's settings hold (paths, ids, URLs, secrets as
plain strings); `open_gateways(config)` builds the HTTP clients and one gateway per
configured channel, and closes the clients on exit::

    async with open_gateways(config, token_cache=redis_token_cache) as router:
        deliverer = Deliverer(router, breaker=..., limiter=...)
        result = await deliverer.send(message, attempt)

A channel whose settings are missing is simply absent (its messages get
``failed: <channel>:not_configured``); a channel whose settings are present but wrong
raises `ConfigError` at start-up, not at the first message.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from push.errors import ConfigError
from push.gateway import Gateway, Router
from push.gateways.apns import APNS_URL, ApnsGateway
from push.gateways.apns_auth import ApnsKey, ProviderTokens
from push.gateways.fcm import FCM_URL, FcmGateway
from push.gateways.google_oauth import ServiceAccountTokens
from push.gateways.vapid import VapidKey
from push.gateways.webhook import WebhookGateway
from push.gateways.webpush import WebPushGateway
from push.guarded_http import WEBHOOK_TIMEOUTS, guarded_client
from push.h1 import H1Client
from push.http import make_client, make_h1_client
from push.ssrf import DestinationGuard
from push.stores import TokenCache

__all__ = ["GatewayConfig", "build_gateways", "load_subscription_file", "open_gateways"]


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateways need; field names follow the ``PUSHREC_*`` settings."""

    fcm_url: str = FCM_URL
    fcm_credentials: Path | None = None
    fcm_project_id: str | None = None
    apns_url: str = APNS_URL
    apns_key_file: Path | None = None
    apns_key_id: str | None = None
    apns_team_id: str | None = None
    apns_topic: str | None = None
    vapid_private_key: Path | None = None
    vapid_subject: str | None = None
    webhook_secrets: Sequence[str] = field(default_factory=tuple, repr=False)
    destination_allowed_hosts: Sequence[str] = ()
    ca_bundle: Path | None = None
    max_connections: int = 100

    def __post_init__(self) -> None:
        apns = (self.apns_key_file, self.apns_key_id, self.apns_team_id, self.apns_topic)
        if any(apns) and not all(apns):
            raise ConfigError("APNs needs apns_key_file, apns_key_id, apns_team_id, apns_topic")
        if bool(self.vapid_private_key) != bool(self.vapid_subject):
            raise ConfigError("Web Push needs both vapid_private_key and vapid_subject")

    def destination_guard(self) -> DestinationGuard:
        """The guard for webhook URLs and Web Push endpoints (`push.ssrf`)."""
        return DestinationGuard(self.destination_allowed_hosts)


def build_gateways(
    config: GatewayConfig,
    *,
    apns_client: httpx.AsyncClient,
    fcm_client: H1Client,
    webpush_client: H1Client,
    webhook_client: H1Client,
    guard: DestinationGuard,
    token_cache: TokenCache | None = None,
) -> list[Gateway]:
    """The configured gateways over the given clients (see `open_gateways`);
    `webpush_client` and `webhook_client` connect through `guard`."""
    gateways: list[Gateway] = []
    if config.fcm_credentials:
        tokens = ServiceAccountTokens.from_file(config.fcm_credentials, ca_bundle=config.ca_bundle)
        gateways.append(
            FcmGateway(
                fcm_client, tokens, project_id=config.fcm_project_id, base_url=config.fcm_url
            )
        )
    if config.apns_key_file and config.apns_key_id and config.apns_team_id and config.apns_topic:
        key = ApnsKey.from_file(
            config.apns_key_file, key_id=config.apns_key_id, team_id=config.apns_team_id
        )
        gateways.append(
            ApnsGateway(
                apns_client,
                ProviderTokens(key, token_cache),
                topic=config.apns_topic,
                base_url=config.apns_url,
            )
        )
    if config.vapid_private_key and config.vapid_subject:
        vapid = VapidKey.from_file(config.vapid_private_key, config.vapid_subject)
        gateways.append(WebPushGateway(webpush_client, vapid, guard=guard))
    if config.webhook_secrets:
        gateways.append(WebhookGateway(webhook_client, list(config.webhook_secrets), guard=guard))
    return gateways


@asynccontextmanager
async def open_gateways(
    config: GatewayConfig, *, token_cache: TokenCache | None = None
) -> AsyncIterator[Router]:
    """A `Router` over every configured gateway; its HTTP clients close on exit.

    Which client for which channel (figures in docs/push.md, from bench/push.py):

    * APNs: an `httpx.AsyncClient`, HTTP/2 (APNs accepts nothing else).
    * FCM: a `push.h1.H1Client`, HTTP/1.1 keep-alive: per send a fraction of the CPU of
      httpx's pure-Python HTTP/2 or aiohttp's HTTP/1.1. Its URL is a setting, not
      input: unguarded.
    * Web Push endpoints and webhook URLs come from input: one guarded `H1Client` each
      (`push.guarded_http`), HTTP/1.1, every connect checked by the destination guard;
      webhooks wait longer for an answer.

    Each pool holds up to `config.max_connections` connections. `token_cache` shares
    APNs provider tokens between processes (in-memory when None).
    """
    guard = config.destination_guard()
    ca, limit = config.ca_bundle, config.max_connections
    async with AsyncExitStack() as stack:
        apns_client = await stack.enter_async_context(
            make_client(ca_bundle=ca, max_connections=limit)
        )
        fcm_client = await stack.enter_async_context(
            make_h1_client(ca_bundle=ca, max_connections=limit)
        )
        webpush_client = await stack.enter_async_context(
            guarded_client(guard, ca_bundle=ca, max_connections=limit)
        )
        webhook_client = await stack.enter_async_context(
            guarded_client(guard, ca_bundle=ca, max_connections=limit, timeouts=WEBHOOK_TIMEOUTS)
        )
        yield Router(
            build_gateways(
                config,
                apns_client=apns_client,
                fcm_client=fcm_client,
                webpush_client=webpush_client,
                webhook_client=webhook_client,
                guard=guard,
                token_cache=token_cache,
            )
        )


def load_subscription_file(path: Path | str) -> dict[str, object]:
    """A Web Push subscription JSON file (``PushSubscription.toJSON()``)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read subscription file: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError("subscription file must hold a JSON object")
    return value
