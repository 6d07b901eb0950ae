"""``pushrec send``: one message through the configured gateway, result as JSON; and
``pushrec gateways serve``: the local stand-in gateways for demos and tests."""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from push import (
    Channel,
    DeliveryResult,
    Device,
    Message,
    Priority,
    PushError,
    WebPushSubscription,
)
from push.config import GatewayConfig, load_subscription_file, open_gateways
from push.delivery import Deliverer
from push.stores import FileTokenCache
from push.testing.serve import add_arguments as add_serve_arguments
from push.testing.serve import serve_forever
from worker.cli.common import fail, load_settings, print_json
from worker.delivery.gateway_config import gateway_config

__all__ = ["register"]


def register(subparsers: Any) -> None:
    send = subparsers.add_parser(
        "send",
        help="send one push message with the configured gateways",
        description="Exit status 0 only when the gateway accepted the message.",
    )
    send.add_argument("--channel", required=True, choices=[c.value for c in Channel])
    send.add_argument(
        "--to",
        required=True,
        metavar="TARGET",
        help="FCM token, APNs device token, Web Push subscription JSON file, or webhook URL",
    )
    send.add_argument("--title", required=True)
    send.add_argument("--body", required=True)
    send.add_argument("--data", default="{}", help="JSON object of extra data")
    send.add_argument("--link", help="deep link (the message id is added as pr_mid)")
    send.add_argument("--image", help="image URL")
    send.add_argument("--id", help="message id (default: random)")
    send.add_argument("--ttl", type=int, default=86_400, help="seconds (default one day)")
    send.add_argument("--priority", choices=[p.value for p in Priority], default="normal")
    send.add_argument(
        "--max-wait", type=float, default=10.0, help="retry in-process up to this many seconds"
    )
    send.set_defaults(handler=_send)

    gateways = subparsers.add_parser("gateways", help="local stand-in push gateways")
    commands = gateways.add_subparsers(dest="gateways_command", required=True)
    serve = commands.add_parser(
        "serve", help="run local FCM, APNs, Web Push and webhook servers until stopped"
    )
    add_serve_arguments(serve)
    serve.set_defaults(handler=_serve)


def _data(text: str) -> dict[str, str]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        fail(f"--data is not JSON: {exc}")
    if not isinstance(value, dict):
        fail("--data must be a JSON object")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


def _message(args: argparse.Namespace) -> Message:
    channel = Channel(args.channel)
    if channel is Channel.WEBPUSH:
        subscription = WebPushSubscription.from_json(load_subscription_file(Path(args.to)))
        device = Device(channel, subscription=subscription)
    else:
        device = Device(channel, args.to)
    return Message(
        id=args.id or "cli" + uuid.uuid4().hex[:20],
        device=device,
        title=args.title,
        body=args.body,
        link=args.link,
        image=args.image,
        data=_data(args.data),
        ttl=args.ttl,
        priority=Priority(args.priority),
    )


async def _deliver(
    config: GatewayConfig, message: Message, max_wait: float, cache_dir: Path
) -> tuple[DeliveryResult, int]:
    # Successive `pushrec send` runs share the APNs provider token through a file cache.
    async with open_gateways(config, token_cache=FileTokenCache(cache_dir)) as router:
        return await Deliverer(router).send_until_settled(message, max_wait_s=max_wait)


def _send(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        config = gateway_config(settings)
        message = _message(args)
        cache_dir = settings.state_dir / "push-token-cache"
        result, attempts = asyncio.run(_deliver(config, message, args.max_wait, cache_dir))
    except PushError as exc:
        fail(f"{type(exc).__name__}: {exc}")
    print_json({**result.to_dict(), "attempts": attempts})
    return 0 if result.delivered else 1


def _serve(args: argparse.Namespace) -> int:
    return serve_forever(args.state_dir, latency_ms=args.latency_ms)
