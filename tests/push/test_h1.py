"""`push.h1.H1Client` against a raw HTTP/1.1 server on 127.0.0.1 that answers with
exactly the bytes each test scripts: framing (length, chunks, read-until-close, interim
answers), keep-alive and its limits, the pool's bounds, timeouts and broken answers.
Each test runs on asyncio's loop and on uvloop's (the push runtime's)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import uvloop

from push.h1 import (
    ConnectError,
    H1Client,
    H1Error,
    H1Timeouts,
    ProtocolError,
    ServerDisconnectedError,
)
from push.ssrf import ResolvedAddress

_RUNNERS = {"asyncio": asyncio.run, "uvloop": uvloop.run}
_runner: Callable[..., object] = asyncio.run


@pytest.fixture(autouse=True, params=sorted(_RUNNERS))
def _loop_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(f"{__name__}._runner", _RUNNERS[request.param])


Reply = tuple[bytes, bool]  # bytes to write, then whether to close the connection
Answer = Callable[[bytes], Awaitable[Reply]]  # a request's head -> its reply
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


@dataclass
class RawServer:
    """Reads each request (head and content-length body), writes what `answer` returns
    for it and closes the connection when told to."""

    answer: Answer
    heads: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                self.heads.append(head)
                self.bodies.append(await reader.readexactly(length))
                reply, close = await self.answer(head)
                writer.write(reply)
                await writer.drain()
                if close:
                    return
        finally:
            self.open_now -= 1
            writer.close()


async def _serve(answer: Answer) -> tuple[RawServer, asyncio.Server]:
    raw = RawServer(answer)
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    raw.port = server.sockets[0].getsockname()[1]
    return raw, server


def _client(**kwargs: object) -> H1Client:
    return H1Client(
        ssl_context=ssl.create_default_context(),
        user_agent="pushrec-push/test",
        **kwargs,  # type: ignore[arg-type]
    )


def _run(
    answer: Answer,
    body: Callable[[RawServer, H1Client], Awaitable[object]],
    **client_kwargs: object,
) -> tuple[RawServer, object]:
    async def go() -> tuple[RawServer, object]:
        raw, server = await _serve(answer)
        try:
            async with _client(**client_kwargs) as client:
                return raw, await body(raw, client)
        finally:
            server.close()

    return _runner(go())  # type: ignore[return-value]


def _replies(*replies: bytes | Reply) -> Answer:
    """Answers in turn (a bare bytes reply keeps the connection open), the last again."""
    queue = [r if isinstance(r, tuple) else (r, False) for r in replies]

    async def answer(head: bytes) -> Reply:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return answer


def _url(raw: RawServer, path: str = "/send") -> str:
    return f"http://127.0.0.1:{raw.port}{path}"


def test_request_wire_format_and_answer() -> None:
    async def body(raw: RawServer, client: H1Client) -> object:
        return await client.request(
            "POST", _url(raw, "/v1/x:send?a=1"), {"content-type": "application/json"}, b"{}"
        )

    reply = b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\nX-A: 1\r\nx-a: 2\r\n\r\nabc"
    raw, (status, headers, answer) = _run(_replies(reply), body)  # type: ignore[misc]
    assert (status, answer) == (201, b"abc")
    assert headers["x-a"] == "1, 2" and headers["X-A"] == "1, 2" and "CONTENT-LENGTH" in headers
    lines = raw.heads[0].decode().split("\r\n")
    assert lines[0] == "POST /v1/x:send?a=1 HTTP/1.1"
    fields = dict(line.split(": ", 1) for line in lines[1:] if line)
    assert fields["host"] == f"127.0.0.1:{raw.port}"
    assert fields["content-type"] == "application/json"
    assert fields["content-length"] == "2" and raw.bodies == [b"{}"]
    assert fields["user-agent"] == "pushrec-push/test"


def test_a_user_agent_the_request_names_replaces_the_clients() -> None:
    async def body(raw: RawServer, client: H1Client) -> object:
        return await client.request("POST", _url(raw), {"User-Agent": "other"}, b"")

    raw, _ = _run(_replies(OK), body)
    agents = [line for line in raw.heads[0].split(b"\r\n") if line.lower().startswith(b"user-")]
    assert agents == [b"User-Agent: other"]


def test_target_is_escaped_and_host_is_ascii() -> None:
    async def body(raw: RawServer, client: H1Client) -> object:
        await client.request("POST", _url(raw, "/a b/é?q=x y%20z#frag"), {}, b"")
        return None

    raw, _ = _run(_replies(OK), body)
    assert raw.heads[0].split(b"\r\n")[0] == b"POST /a%20b/%C3%A9?q=x%20y%20z HTTP/1.1"


def test_header_injection_is_refused_before_anything_is_sent() -> None:
    async def body(raw: RawServer, client: H1Client) -> object:
        for headers in ({"x-a": "1\r\nx-b: 2"}, {"x-a": "1\n"}, {"x-a": "\0"}):
            with pytest.raises(ValueError, match="forbidden character"):
                await client.request("POST", _url(raw), headers, b"")
        for headers in ({"x-a\n": "1"}, {"x:a": "1"}, {"Content-Length": "0"}, {"HOST": "x"}):
            with pytest.raises(ValueError, match="cannot be sent"):
                await client.request("POST", _url(raw), headers, b"")
        for method in ("GET / HTTP/1.1\r\nx-smuggled: 1\r\nX:", "HEAD"):
            with pytest.raises(ValueError, match="method"):
                await client.request(method, _url(raw), {}, b"")
        return None

    raw, _ = _run(_replies(OK), body)
    assert raw.heads == []


def test_kept_alive_connection_is_reused_until_the_server_says_close() -> None:
    close = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"

    async def body(raw: RawServer, client: H1Client) -> object:
        return [(await client.request("POST", _url(raw), {}, b"x"))[0] for _ in range(4)]

    raw, statuses = _run(_replies(OK, OK, close, OK), body)
    assert statuses == [200, 200, 200, 200]
    assert raw.connections == 2  # three on the first, the one after "close" on a new one


def test_chunked_read_until_close_and_interim_answers() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    )
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\ncontent-length: 1\r\n\r\n!"
    until_close = (b"HTTP/1.1 200 OK\r\n\r\nall of it", True)

    async def body(raw: RawServer, client: H1Client) -> object:
        return [(await client.request("POST", _url(raw), {}, b""))[::2] for _ in range(3)]

    raw, answers = _run(_replies(chunked, interim, until_close), body)
    assert answers == [(200, b"abcdefg"), (202, b"!"), (200, b"all of it")]
    assert raw.connections == 1


def test_server_closing_without_an_answer_is_a_disconnect_and_the_next_request_reconnects() -> None:
    async def body(raw: RawServer, client: H1Client) -> object:
        with pytest.raises(ServerDisconnectedError):
            await client.request("POST", _url(raw), {}, b"")
        return (await client.request("POST", _url(raw), {}, b""))[0]

    raw, status = _run(_replies((b"HTTP/1.1 200 OK\r\ncontent-len", True), OK), body)
    assert status == 200 and raw.connections == 2


def test_a_kept_alive_connection_the_server_closed_is_not_reused() -> None:
    async def body(raw: RawServer, client: H1Client) -> object:
        await client.request("POST", _url(raw), {}, b"")
        await asyncio.sleep(0.1)  # the server's close reaches the idle connection
        return (await client.request("POST", _url(raw), {}, b""))[0]

    # The server answers as if keeping the connection, then closes it.
    raw, status = _run(_replies((OK, True), OK), body)
    assert status == 200 and raw.connections == 2


def test_malformed_and_oversize_answers_are_protocol_errors() -> None:
    big = b"HTTP/1.1 200 OK\r\ncontent-length: 2000\r\n\r\n" + b"x" * 2000
    fat_head = (
        b"HTTP/1.1 200 OK\r\n" + b"x-pad: " + b"y" * 70_000 + b"\r\n" + b"content-length: 0\r\n\r\n"
    )

    async def body(raw: RawServer, client: H1Client) -> object:
        for expected in ("malformed", "body over 1000", "answer head over"):
            with pytest.raises(ProtocolError, match=expected):
                await client.request("POST", _url(raw), {}, b"")
        return (await client.request("POST", _url(raw), {}, b""))[0]

    answers = _replies(b"HTTP/1.1 abc\r\n\r\n", big, fat_head, OK)
    raw, status = _run(answers, body, max_body=1000)
    assert status == 200
    assert raw.connections == 4  # no broken connection was reused


def test_slow_answer_times_out_and_its_connection_is_not_reused() -> None:
    answered = 0

    async def answer(head: bytes) -> Reply:
        nonlocal answered
        answered += 1
        if answered == 1:  # the first request's answer comes after its read timeout
            await asyncio.sleep(0.5)
        return OK, False

    async def body(raw: RawServer, client: H1Client) -> object:
        with pytest.raises(TimeoutError):
            await client.request("POST", _url(raw), {}, b"")
        return (await client.request("POST", _url(raw), {}, b""))[0]

    raw, status = _run(answer, body, timeouts=H1Timeouts(read=0.2))
    assert status == 200 and raw.connections == 2


def test_the_pool_holds_at_most_max_connections_and_waits_for_a_free_one() -> None:
    async def answer(head: bytes) -> Reply:
        await asyncio.sleep(0.02)
        return OK, False

    async def body(raw: RawServer, client: H1Client) -> object:
        results = await asyncio.gather(
            *(client.request("POST", _url(raw), {}, b"") for _ in range(12))
        )
        return [status for status, _, _ in results]

    raw, statuses = _run(answer, body, max_connections=3)
    assert statuses == [200] * 12
    assert raw.most_open == 3 and raw.connections == 3


def test_waiting_for_a_free_connection_is_bounded_by_the_pool_timeout() -> None:
    async def answer(head: bytes) -> Reply:
        await asyncio.sleep(0.5)
        return OK, False

    async def body(raw: RawServer, client: H1Client) -> object:
        first = asyncio.create_task(client.request("POST", _url(raw), {}, b""))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            await client.request("POST", _url(raw), {}, b"")
        return (await first)[0]

    raw, status = _run(answer, body, max_connections=1, timeouts=H1Timeouts(pool=0.1))
    assert status == 200 and raw.connections == 1


def test_an_idle_connection_is_closed_after_keepalive() -> None:
    async def body(raw: RawServer, client: H1Client) -> object:
        await client.request("POST", _url(raw), {}, b"")
        await asyncio.sleep(0.3)
        open_after_idle = raw.open_now
        await client.request("POST", _url(raw), {}, b"")
        return open_after_idle

    raw, open_after_idle = _run(_replies(OK), body, keepalive_s=0.1)
    assert open_after_idle == 0 and raw.connections == 2


def test_each_address_of_a_name_is_tried_in_turn() -> None:
    async def addresses(host: str, port: int) -> list[ResolvedAddress]:
        assert host == "gateway.test"
        return [ResolvedAddress(socket.AF_INET, a) for a in ("127.0.0.2", "127.0.0.1")]

    async def body(raw: RawServer, client: H1Client) -> object:
        return (await client.request("POST", f"http://gateway.test:{raw.port}/", {}, b""))[0]

    raw, status = _run(_replies(OK), body, resolver=addresses)  # 127.0.0.2: refused
    assert status == 200
    assert raw.heads[0].split(b"\r\n")[1] == f"host: gateway.test:{raw.port}".encode()


def test_refused_connection_is_a_connect_error() -> None:
    async def go() -> None:
        async with _client() as client:
            await client.request("POST", "http://127.0.0.1:9/x", {}, b"")

    with pytest.raises(ConnectError, match=r"127\.0\.0\.1:9\b"):
        _runner(go())


def test_a_stray_answer_closes_the_idle_connection() -> None:
    # Two answers to one request: the second arrives while the connection is idle.
    async def body(raw: RawServer, client: H1Client) -> object:
        await client.request("POST", _url(raw), {}, b"")
        await asyncio.sleep(0.1)
        return (await client.request("POST", _url(raw), {}, b""))[0]

    raw, status = _run(_replies(OK + OK, OK), body)
    assert status == 200 and raw.connections == 2


def test_an_answer_cut_short_of_its_length_or_chunks_is_a_disconnect() -> None:
    cut_length = (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", True)
    cut_chunks = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", True)

    async def body(raw: RawServer, client: H1Client) -> object:
        for _ in range(2):
            with pytest.raises(ServerDisconnectedError):
                await client.request("POST", _url(raw), {}, b"")
        return None

    raw, _ = _run(_replies(cut_length, cut_chunks), body)
    assert raw.connections == 2


def test_switching_protocols_interim_floods_and_an_endless_head_are_refused() -> None:
    switching = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n"
    flood = b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" * 6 + OK
    endless = (b"HTTP/1.1 200 OK\r\nx-pad: " + b"y" * 70_000, False)  # no end, no close

    async def body(raw: RawServer, client: H1Client) -> object:
        for expected in ("switches protocols", "interim answers", "answer head over"):
            with pytest.raises(ProtocolError, match=expected):
                await client.request("POST", _url(raw), {}, b"")
        return None

    raw, _ = _run(_replies(switching, flood, endless), body)
    assert raw.connections == 3


def test_an_interim_answer_then_a_close_is_a_disconnect_not_an_answer() -> None:
    async def body(raw: RawServer, client: H1Client) -> object:
        with pytest.raises(ServerDisconnectedError):
            await client.request("POST", _url(raw), {}, b"")
        return None

    _run(_replies((b"HTTP/1.1 100 Continue\r\n\r\n", True)), body)


def test_closing_the_client_fails_a_request_reading_until_close() -> None:
    async def answer(head: bytes) -> Reply:
        return b"HTTP/1.1 200 OK\r\n\r\npartial", False  # the rest would come at close

    async def body(raw: RawServer, client: H1Client) -> object:
        pending = asyncio.create_task(client.request("POST", _url(raw), {}, b""))
        await asyncio.sleep(0.1)
        await client.aclose()
        with pytest.raises(H1Error):
            await pending
        return None

    _run(answer, body)


def test_a_name_that_does_not_resolve_is_a_connect_error() -> None:
    async def nowhere(host: str, port: int) -> list[ResolvedAddress]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def go() -> None:
        async with _client(resolver=nowhere) as client:
            await client.request("POST", "http://gateway.test/x", {}, b"")

    with pytest.raises(ConnectError, match=r"look up gateway\.test"):
        _runner(go())


def test_a_woken_waiter_that_is_cancelled_passes_the_slot_on() -> None:
    async def answer(head: bytes) -> Reply:
        await asyncio.sleep(0.05)
        return OK, False

    async def body(raw: RawServer, client: H1Client) -> object:
        async def first() -> None:
            await client.request("POST", _url(raw), {}, b"")
            second.cancel()  # woken by the release just now, not yet run

        one = asyncio.create_task(first())
        await asyncio.sleep(0.01)
        second = asyncio.create_task(client.request("POST", _url(raw), {}, b""))
        third = asyncio.create_task(client.request("POST", _url(raw), {}, b""))
        await one
        status, _, _ = await third  # within the pool timeout: the slot came to it
        return second.cancelled(), status

    _, (cancelled, status) = _run(answer, body, max_connections=1, timeouts=H1Timeouts(pool=0.5))  # type: ignore[misc]
    assert cancelled and status == 200
