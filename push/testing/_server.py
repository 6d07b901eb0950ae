"""The machinery shared by the local gateways: a tiny ASGI base, scripting, recording,
the JSON admin endpoint and a runner that serves an app from a thread (on 127.0.0.1, or an
address the caller names).

Every gateway server answers, besides its own protocol:

* ``GET  /_admin/received``   what it accepted or rejected, oldest first (JSON list)
* ``GET  /_admin/stats``      ``{"in_flight": n, "max_in_flight": m}``: requests being
  answered now, and the most it held at once
* ``POST /_admin/script``     ``{"responses": [{"status": 503, "retry_after": "2",
  "reason": "...", "delay_ms": 12000}], "key": <token or null>, "latency_ms": 50,
  "hold": true}``: queued answers (each may be delayed: a client that gives up first
  sees a timeout), latency for every request, and a hold: while on, requests wait
  before being looked at (nothing is accepted) until ``"hold": false``
* ``POST /_admin/unregister`` ``{"tokens": [...]}``: these tokens are gone from now on
* ``POST /_admin/reset``      forget scripts, records and unregistered tokens
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

__all__ = [
    "KEEP_ALIVE_S",
    "GatewayServer",
    "Request",
    "Response",
    "Script",
    "Scripted",
    "serve_app",
]

KEEP_ALIVE_S = 5.0
"""How long an idle connection stays open: hypercorn's default, as many servers' (FCM's
front ends keep theirs far longer)."""

_Receive = Callable[[], Awaitable[dict[str, Any]]]
_Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    http_version: str

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, value: Any, headers: dict[str, str] | None = None) -> Response:
        merged = {"content-type": "application/json; charset=UTF-8", **(headers or {})}
        return cls(status, json.dumps(value).encode(), merged)


@dataclass(frozen=True, slots=True)
class Scripted:
    """One scripted answer: `status`, optional Retry-After, protocol error `reason`, and
    `delay_s` before it is given."""

    status: int
    retry_after: str | None = None
    reason: str | None = None
    delay_s: float = 0.0

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Scripted:
        retry = value.get("retry_after")
        return cls(
            int(value["status"]),
            None if retry is None else str(retry),
            value.get("reason"),
            float(value.get("delay_ms", 0)) / 1000,
        )


class Script:
    """Scripted behaviour: queued answers (per token or for anyone), latency, gone tokens.

    Thread-safe enough for tests: mutated from the test thread, read by the server loop.
    """

    def __init__(self) -> None:
        self.latency_s = 0.0
        self.unregistered: dict[str, int] = {}  # token -> when it became invalid (ms)
        self._queues: dict[str | None, deque[Scripted]] = {}
        self._lock = threading.Lock()

    def push(self, *answers: Scripted, key: str | None = None) -> None:
        with self._lock:
            self._queues.setdefault(key, deque()).extend(answers)

    def take(self, key: str | None) -> Scripted | None:
        with self._lock:
            for k in (key, None):
                queue = self._queues.get(k)
                if queue:
                    return queue.popleft()
        return None

    def unregister(self, *tokens: str) -> None:
        now_ms = int(time.time() * 1000)
        for token in tokens:
            self.unregistered[token] = now_ms

    def reset(self) -> None:
        with self._lock:
            self._queues.clear()
        self.unregistered.clear()
        self.latency_s = 0.0


class GatewayServer:
    """ASGI base: subclasses implement `handle`; records go to `received`."""

    name = "gateway"

    def __init__(self, *, record_limit: int = 100_000) -> None:
        self.script = Script()
        self.received: deque[dict[str, Any]] = deque(maxlen=record_limit)
        self.base_url = ""
        self.in_flight = 0
        self.max_in_flight = 0  # shows whether a client sends concurrently
        self._released = asyncio.Event()  # cleared while requests are held
        self._released.set()

    def record(self, **entry: Any) -> None:
        self.received.append({"at": time.time(), **entry})

    def reset(self) -> None:
        """Forget scripts, records and unregistered tokens."""
        self.script.reset()
        self.received.clear()
        self.max_in_flight = 0
        self._released.set()

    async def take_scripted(self, key: str | None) -> Scripted | None:
        """The next scripted answer for `key` (or for anyone), after its delay."""
        scripted = self.script.take(key)
        if scripted is not None and scripted.delay_s:
            await asyncio.sleep(scripted.delay_s)
        return scripted

    async def handle(self, request: Request) -> Response:  # pragma: no cover - abstract
        raise NotImplementedError

    async def __call__(self, scope: dict[str, Any], receive: _Receive, send: _Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            event = await receive()
            chunks.append(event.get("body", b""))
            if not event.get("more_body"):
                break
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            name = k.decode("latin-1").lower()
            value = v.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        request = Request(
            scope["method"],
            scope["path"],
            scope["query_string"].decode("latin-1"),
            headers,
            b"".join(chunks),
            scope["http_version"],
        )
        if request.path.startswith("/_admin/"):
            response = self._admin(request)
        else:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if self.script.latency_s:
                    await asyncio.sleep(self.script.latency_s)
                await self._released.wait()
                response = await self.handle(request)
            finally:
                self.in_flight -= 1
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(k.encode(), v.encode()) for k, v in response.headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    def _admin(self, request: Request) -> Response:
        action = request.path.removeprefix("/_admin/")
        if action == "received" and request.method == "GET":
            return Response.json(200, list(self.received))
        if action == "stats" and request.method == "GET":
            stats = {"in_flight": self.in_flight, "max_in_flight": self.max_in_flight}
            return Response.json(200, stats)
        if request.method != "POST":
            return Response.json(405, {"error": "method not allowed"})
        payload = request.json() if request.body else {}
        if action == "script":
            answers = [Scripted.from_json(a) for a in payload.get("responses", [])]
            if answers:
                self.script.push(*answers, key=payload.get("key"))
            if "latency_ms" in payload:
                self.script.latency_s = float(payload["latency_ms"]) / 1000
            if "hold" in payload:
                if payload["hold"]:
                    self._released.clear()
                else:
                    self._released.set()
            return Response.json(200, {"ok": True})
        if action == "unregister":
            self.script.unregister(*payload.get("tokens", []))
            return Response.json(200, {"ok": True})
        if action == "reset":
            self.reset()
            return Response.json(200, {"ok": True})
        return Response.json(404, {"error": "unknown admin action"})


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_app(
    app: GatewayServer,
    *,
    port: int = 0,
    certfile: str | None = None,
    keyfile: str | None = None,
    host: str = "127.0.0.1",
    keep_alive_s: float = KEEP_ALIVE_S,
) -> Iterator[str]:
    """Serve `app` on `host` (default 127.0.0.1) from a background thread; yield its base
    URL. An idle connection is closed after `keep_alive_s`.

    HTTP/1.1 and HTTP/2 (cleartext with prior knowledge, or TLS with ALPN when a
    certificate is given) on one port; a free port unless `port` is given (retried if
    another process takes it first). Stops and joins the thread on exit.
    """
    for attempt in range(5):
        chosen = port or _free_port(host)
        try:
            stop, thread = _start(app, host, chosen, certfile, keyfile, keep_alive_s)
            break
        except RuntimeError:
            if port or attempt == 4:
                raise
    try:
        yield app.base_url
    finally:
        stop()
        thread.join(10)


def _start(
    app: GatewayServer,
    host: str,
    port: int,
    certfile: str | None,
    keyfile: str | None,
    keep_alive_s: float,
) -> tuple[Callable[[], None], threading.Thread]:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.keep_alive_timeout = keep_alive_s
    config.keep_alive_max_requests = 1_000_000_000
    config.accesslog = None
    config.errorlog = None
    config.h2_max_concurrent_streams = 1000
    if certfile:
        config.certfile = certfile
        config.keyfile = keyfile
    scheme = "https" if certfile else "http"
    app.base_url = f"{scheme}://{host}:{port}"
    started = threading.Event()
    failure: list[BaseException] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        async def ready_then_wait() -> None:
            started.set()
            await stop.wait()

        await serve(app, config, shutdown_trigger=ready_then_wait)  # type: ignore[arg-type]

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)
            started.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name=f"{app.name}-server", daemon=True)
    thread.start()
    started.wait(10)
    if failure:
        thread.join(10)
        raise RuntimeError(f"{app.name} server failed to start on port {port}") from failure[0]
    _wait_listening(host, port)

    def request_stop() -> None:
        loop.call_soon_threadsafe(stop.set)

    return request_stop, thread


def _wait_listening(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {host}:{port}")
