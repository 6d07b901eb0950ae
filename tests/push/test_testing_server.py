"""The local gateways' fault scripting (push/testing/_server.py): a hold that keeps
requests open unlooked-at, and scripted answers given after a delay."""

from __future__ import annotations

import threading

import httpx
import pytest

from push.testing._server import GatewayServer, Request, Response, serve_app


class _Echo(GatewayServer):
    """Takes every request (recorded), unless a scripted answer says otherwise."""

    name = "echo"

    async def handle(self, request: Request) -> Response:
        scripted = await self.take_scripted(request.path)
        if scripted is not None and scripted.status != 200:
            self.record(kind="scripted", status=scripted.status, path=request.path)
            return Response.json(scripted.status, {"error": "scripted"})
        self.record(kind="message", path=request.path)
        return Response.json(200, {"ok": True})


def _stats(base: str) -> dict[str, int]:
    stats: dict[str, int] = httpx.get(f"{base}/_admin/stats").json()
    return stats


def test_a_held_request_waits_unrecorded_until_released() -> None:
    server = _Echo()
    with serve_app(server) as base:
        httpx.post(f"{base}/_admin/script", json={"hold": True}).raise_for_status()
        answers: list[int] = []
        sender = threading.Thread(
            target=lambda: answers.append(httpx.post(f"{base}/send", timeout=30).status_code)
        )
        sender.start()
        try:
            while _stats(base)["in_flight"] != 1:
                sender.join(0.02)
            assert list(server.received) == [] and answers == []
        finally:
            httpx.post(f"{base}/_admin/script", json={"hold": False}).raise_for_status()
            sender.join(30)
        assert answers == [200]
        assert [r["kind"] for r in server.received] == ["message"]
        assert _stats(base) == {"in_flight": 0, "max_in_flight": 1}


def test_a_delayed_scripted_answer_reaches_a_patient_client_and_times_out_an_impatient_one() -> (
    None
):
    server = _Echo()
    with serve_app(server) as base:
        script = {"responses": [{"status": 503, "delay_ms": 1500}] * 2, "key": "/send"}
        httpx.post(f"{base}/_admin/script", json=script).raise_for_status()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/send", timeout=httpx.Timeout(5.0, read=0.05))
        assert httpx.post(f"{base}/send", timeout=30).status_code == 503
        assert httpx.post(f"{base}/send", timeout=30).status_code == 200  # script used up
