# ruff: noqa: E402  (imports follow the sys.path fix below)
"""Benchmark: our sending path vs bare client loops, same server, same run.

The four local gateways run in a separate process (`python -m push.testing serve`), so
the client's CPU (`time.process_time`) is all ours. For each injected latency, number
in flight and gateway, every variant sends `--messages` messages:

* ``bare-httpx-h2``, ``bare-httpx-h1``, ``bare-aiohttp-h1``, ``bare-h1``: a plain client
  posting in a loop (httpx over h2c or HTTP/1.1, aiohttp over HTTP/1.1, `push.h1`'s
  `H1Client`): what each client costs;
* ``ours``: `Deliverer(router)` + `send_many`: building, signing (Web Push: encrypting
  with a fresh key per message), sending, mapping the answer, breaker bookkeeping, over
  the client `open_gateways` gives the channel (named in the variant: APNs httpx HTTP/2,
  the others `push.h1` HTTP/1.1, chosen by these figures).

Bare loops post pre-built requests (the same bytes our builders produce, so HPACK and
the server see identical traffic) with a client warmed beforehand; ours runs through
`open_gateways` + `Deliverer` + `send_many`, opened and warmed once like a worker.

Runs on uvloop, the push runtime's loop. Repeated `--repeats` times, variants
interleaved; medians reported. Prints a table and
writes JSON to `--json` (default bench/out/push.json). No assertions: figures only.

    PYTHONPATH=. python bench/push.py [--messages 3000] [--concurrency 1 64]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/push.py`, this file's folder comes first on sys.path and its name
# would shadow the `push` package: put the repository root there instead.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx
import psutil
import uvloop

from push.config import GatewayConfig, open_gateways
from push.delivery import Deliverer
from push.gateway import send_many
from push.gateways.apns import build_apns_request
from push.gateways.apns_auth import ApnsKey, ProviderTokens
from push.gateways.fcm import build_fcm_request
from push.gateways.google_oauth import ServiceAccountTokens
from push.gateways.vapid import VapidKey
from push.gateways.webhook import build_webhook_request, decode_secret
from push.gateways.webpush import build_webpush_request
from push.h1 import H1Error
from push.http import make_h1_client
from push.messages import Channel, Device, Message, WebPushSubscription
from push.stores import MemoryTokenCache


def _message(channel: Channel, device: Device, i: int) -> Message:
    return Message(
        id=f"bench{i}-{uuid.uuid4().hex[:12]}",
        device=device,
        title="Still thinking about the trail shoes?",
        body="They are back in your size, 15% off until Sunday with code SPRING-2026.",
        link="https://shop.example/p/123?utm_source=push",
        data={"sku": "123", "campaign": "cart"},
    )


async def _pool(count: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> None:
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            await one(index)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


Prepared = list[tuple[str, dict[str, str], bytes]]


async def bare_httpx(requests: Prepared, concurrency: int, *, http2: bool) -> dict[str, float]:
    """Pre-built requests (the bytes our builders produce) posted by a plain httpx client,
    warmed first; returns the figures of the timed part."""
    async with httpx.AsyncClient(
        http1=not http2,
        http2=http2,
        timeout=30,
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
    ) as client:
        ok = 0

        async def one(index: int) -> None:
            nonlocal ok
            url, headers, body = requests[index % len(requests)]
            try:
                response = await client.post(url, content=body, headers=headers)
            except httpx.HTTPError:  # e.g. a kept-alive connection the server closed
                return
            ok += response.status_code < 300

        await _pool(min(200, len(requests)), concurrency, one)  # warm-up
        ok = 0
        start = time.process_time(), time.perf_counter()
        await _pool(len(requests), concurrency, one)
        return _figures(start, len(requests), ok)


async def bare_aiohttp(requests: Prepared, concurrency: int) -> dict[str, float]:
    """The same with a plain aiohttp session (HTTP/1.1 only)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
        ok = 0

        async def one(index: int) -> None:
            nonlocal ok
            url, headers, body = requests[index % len(requests)]
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    ok += response.status < 300
            except aiohttp.ClientError:
                return

        await _pool(min(200, len(requests)), concurrency, one)
        ok = 0
        start = time.process_time(), time.perf_counter()
        await _pool(len(requests), concurrency, one)
        return _figures(start, len(requests), ok)


async def bare_h1(requests: Prepared, concurrency: int) -> dict[str, float]:
    """The same with `push.h1`'s client (what our gateways send with)."""
    async with make_h1_client(max_connections=100) as client:
        ok = 0

        async def one(index: int) -> None:
            nonlocal ok
            url, headers, body = requests[index % len(requests)]
            try:
                status, _, _ = await client.request("POST", url, headers, body)
            except (H1Error, TimeoutError):
                return
            ok += status < 300

        await _pool(min(200, len(requests)), concurrency, one)
        ok = 0
        start = time.process_time(), time.perf_counter()
        await _pool(len(requests), concurrency, one)
        return _figures(start, len(requests), ok)


def _figures(start: tuple[float, float], count: int, ok: int) -> dict[str, float]:
    cpu, wall = time.process_time() - start[0], time.perf_counter() - start[1]
    return {
        "msgs_per_s": count / wall,
        "cpu_ms_per_msg": 1000 * cpu / count,
        "wall_s": wall,
        "ok": ok,
    }


def _config(env: dict[str, str]) -> GatewayConfig:
    return GatewayConfig(
        fcm_url=env["PUSHREC_FCM_URL"],
        fcm_credentials=Path(env["PUSHREC_FCM_CREDENTIALS"]),
        apns_url=env["PUSHREC_APNS_URL"],
        apns_key_file=Path(env["PUSHREC_APNS_KEY_FILE"]),
        apns_key_id=env["PUSHREC_APNS_KEY_ID"],
        apns_team_id=env["PUSHREC_APNS_TEAM_ID"],
        apns_topic=env["PUSHREC_APNS_TOPIC"],
        vapid_private_key=Path(env["PUSHREC_VAPID_PRIVATE_KEY"]),
        vapid_subject=env["PUSHREC_VAPID_SUBJECT"],
        webhook_secrets=(env["PUSHREC_WEBHOOK_SECRET"],),
        destination_allowed_hosts=("127.0.0.1",),
        max_connections=100,
    )


async def run_suite(
    state: dict[str, Any], args: argparse.Namespace, server: psutil.Process
) -> dict[str, Any]:
    env = state["env"]
    n = args.messages
    cache = MemoryTokenCache()
    key = ApnsKey.from_file(
        env["PUSHREC_APNS_KEY_FILE"],
        key_id=env["PUSHREC_APNS_KEY_ID"],
        team_id=env["PUSHREC_APNS_TEAM_ID"],
    )
    apns_token = await ProviderTokens(key, cache).token()
    fcm_access = await ServiceAccountTokens.from_file(env["PUSHREC_FCM_CREDENTIALS"]).token()
    project = json.loads(Path(env["PUSHREC_FCM_CREDENTIALS"]).read_text())["project_id"]
    hook_url = state["targets"]["webhook"]
    hook_keys = [decode_secret(env["PUSHREC_WEBHOOK_SECRET"])]
    subscription = WebPushSubscription.from_json(
        json.loads(Path(state["targets"]["webpush"]).read_text())
    )
    vapid = VapidKey.from_file(env["PUSHREC_VAPID_PRIVATE_KEY"], env["PUSHREC_VAPID_SUBJECT"])
    devices = {
        Channel.APNS: Device(Channel.APNS, "0" * 64),
        Channel.FCM: Device(Channel.FCM, "bench-" + "x" * 40),
        Channel.WEBPUSH: Device(Channel.WEBPUSH, subscription=subscription),
        Channel.WEBHOOK: Device(Channel.WEBHOOK, hook_url),
    }

    def messages(channel: Channel) -> list[Message]:
        return [_message(channel, devices[channel], i) for i in range(n)]

    def bare_requests(channel: Channel) -> list[tuple[str, dict[str, str], bytes]]:
        now = time.time()
        out = []
        for m in messages(channel):
            if channel is Channel.APNS:
                r = build_apns_request(
                    m,
                    topic=env["PUSHREC_APNS_TOPIC"],
                    provider_token=apns_token,
                    now=now,
                    base_url=env["PUSHREC_APNS_URL"],
                )
            elif channel is Channel.FCM:
                r = build_fcm_request(
                    m,
                    project_id=project,
                    access_token=fcm_access,
                    now=now,
                    base_url=env["PUSHREC_FCM_URL"],
                )
            elif channel is Channel.WEBPUSH:
                r = build_webpush_request(m, vapid=vapid, now=now)
            else:
                r = build_webhook_request(m, secrets=hook_keys, now=now)
            out.append((r.url, r.headers, r.body))
        return out

    variants = {
        "apns/bare-httpx-h2": (Channel.APNS, "httpx-h2"),
        "apns/ours-httpx-h2": (Channel.APNS, "ours"),
        "fcm/bare-httpx-h2": (Channel.FCM, "httpx-h2"),
        "fcm/bare-aiohttp-h1": (Channel.FCM, "aiohttp"),
        "fcm/bare-h1": (Channel.FCM, "h1"),
        "fcm/ours-h1": (Channel.FCM, "ours"),
        "webpush/bare-httpx-h2": (Channel.WEBPUSH, "httpx-h2"),
        "webpush/bare-aiohttp-h1": (Channel.WEBPUSH, "aiohttp"),
        "webpush/bare-h1": (Channel.WEBPUSH, "h1"),
        "webpush/ours-h1": (Channel.WEBPUSH, "ours"),
        "webhook/bare-httpx-h1": (Channel.WEBHOOK, "httpx-h1"),
        "webhook/bare-aiohttp-h1": (Channel.WEBHOOK, "aiohttp"),
        "webhook/bare-h1": (Channel.WEBHOOK, "h1"),
        "webhook/ours-h1": (Channel.WEBHOOK, "ours"),
    }
    # Yardsticks: the bare loop over the same client and protocol as ours.
    yardsticks = {
        "apns/ours-httpx-h2": "apns/bare-httpx-h2",
        "fcm/ours-h1": "fcm/bare-h1",
        "webpush/ours-h1": "webpush/bare-h1",
        "webhook/ours-h1": "webhook/bare-h1",
    }
    if args.only:
        variants = {k: v for k, v in variants.items() if any(k.startswith(o) for o in args.only)}
    results: dict[str, Any] = {}
    async with open_gateways(_config(env), token_cache=cache) as router:
        deliverer = Deliverer(router)
        for latency in args.latencies:
            for c in args.concurrency:
                await _reset(state, latency)
                # Warm-up: connections, tokens, code paths.
                for channel in devices:
                    await send_many(deliverer, messages(channel)[:100], c)
                runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
                for repeat in range(args.repeats):
                    # Alternate the order each repeat so drift in machine load hits all.
                    order = list(variants.items())
                    if repeat % 2:
                        order.reverse()
                    for name, (channel, kind) in order:
                        server_cpu0 = sum(server.cpu_times()[:2])
                        if kind == "ours":
                            batch = messages(channel)
                            start = time.process_time(), time.perf_counter()
                            sent = await send_many(deliverer, batch, c)
                            figures = _figures(start, n, sum(r.delivered for r in sent))
                        elif kind == "h1":
                            figures = await bare_h1(bare_requests(channel), c)
                        elif kind == "aiohttp":
                            figures = await bare_aiohttp(bare_requests(channel), c)
                        else:
                            prepared = bare_requests(channel)
                            figures = await bare_httpx(prepared, c, http2=kind == "httpx-h2")
                        server_cpu = sum(server.cpu_times()[:2]) - server_cpu0
                        figures["server_cpu_ms_per_msg"] = 1000 * server_cpu / n
                        runs[name].append(figures)
                        await _reset(state, latency)  # keep server memory flat
                results[f"latency_{latency:g}ms/concurrency_{c}"] = _summary(runs, yardsticks)
    return results


async def _reset(state: dict[str, Any], latency: float) -> None:
    async with httpx.AsyncClient() as admin:
        for base in state["admin"].values():
            await admin.post(base + "/_admin/reset")
            await admin.post(base + "/_admin/script", json={"latency_ms": latency})


def _summary(runs: dict[str, list[dict[str, float]]], yardsticks: dict[str, str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name, items in runs.items():
        summary[name] = {
            key: statistics.median(item[key] for item in items)
            for key in ("msgs_per_s", "cpu_ms_per_msg", "server_cpu_ms_per_msg", "ok")
        }
        summary[name]["runs"] = items
    for ours_name, bare_name in yardsticks.items():
        mine, bare = summary.get(ours_name), summary.get(bare_name)
        if bare and mine:
            mine["throughput_ratio_vs_bare"] = mine["msgs_per_s"] / bare["msgs_per_s"]
            mine["cpu_ratio_vs_bare"] = mine["cpu_ms_per_msg"] / bare["cpu_ms_per_msg"]
            # Runs of one repeat are close in time: their ratios resist load drift.
            mine["paired_throughput_ratio_median"] = statistics.median(
                o["msgs_per_s"] / b["msgs_per_s"]
                for o, b in zip(mine["runs"], bare["runs"], strict=True)
            )
    return summary


def _table(results: dict[str, Any], args: argparse.Namespace) -> str:
    head = ("latency", "in flight", "variant", "msgs/s", "client CPU ms/msg", "server CPU ms/msg")
    lines = [
        f"{args.messages} messages, median of {args.repeats} runs; 'vs bare' = median of"
        " per-repeat throughput ratios to the bare loop on the same client (CPU ratio in"
        " brackets)",
        f"{head[0]:>8}{head[1]:>10}  {head[2]:<25}{head[3]:>9}{head[4]:>19}{head[5]:>19}"
        f"{'vs bare':>16}{'ok':>7}",
    ]
    for key, summary in results.items():
        latency, concurrency = key.removeprefix("latency_").split("/concurrency_")
        for name, s in summary.items():
            ratio = s.get("paired_throughput_ratio_median")
            shown = f"{ratio:.0%} ({s['cpu_ratio_vs_bare']:.2f}x)" if ratio else ""
            lines.append(
                f"{latency:>8}{concurrency:>10}  {name:<25}{s['msgs_per_s']:>9.0f}"
                f"{s['cpu_ms_per_msg']:>19.3f}{s['server_cpu_ms_per_msg']:>19.3f}{shown:>16}"
                f"{s['ok']:>7.0f}"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64], help="in flight")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latencies", type=float, nargs="+", default=[0.0, 50.0])
    parser.add_argument("--only", nargs="*", help="variant name prefixes")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "push.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as state_dir:
        process = subprocess.Popen(
            [sys.executable, "-m", "push.testing", "serve", "--state-dir", state_dir],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            assert process.stdout is not None
            state = json.loads(process.stdout.readline())
            results = uvloop.run(run_suite(state, args, psutil.Process(process.pid)))
        finally:
            process.terminate()
            process.wait(10)
            if process.stdout:
                process.stdout.close()
    report = {
        "messages": args.messages,
        "concurrency": args.concurrency,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "httpx": httpx.__version__,
        "aiohttp": aiohttp.__version__,
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(_table(results, args))
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
