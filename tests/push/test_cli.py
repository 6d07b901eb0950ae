"""``pushrec send`` against the local gateways (in-process), and ``gateways serve`` as a
separate process whose recordings are read through the admin endpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from push.testing.serve import local_gateways
from worker.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with local_gateways(tmp_path_factory.mktemp("gateways")) as state:
        yield state


@pytest.fixture
def env(
    gateways: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    for name in list(os.environ):
        if name.startswith("PUSHREC_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PUSHREC_STATE_DIR", str(tmp_path_factory.getbasetemp() / "cli-state"))
    for name, value in gateways["env"].items():
        monkeypatch.setenv(name, value)
    return gateways


@pytest.mark.parametrize("channel", ["fcm", "apns", "webpush", "webhook"])
def test_send_delivers_on_every_channel(
    env: dict[str, Any], channel: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "send",
            "--channel",
            channel,
            "--to",
            env["targets"][channel],
            "--title",
            "Hello",
            "--body",
            "Grüße aus dem Test",
            "--data",
            '{"sku": 42}',
            "--link",
            "https://shop.example/p/42",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert out["outcome"] == "delivered" and out["channel"] == channel
    received = httpx.get(env["admin"][channel] + "/_admin/received").json()
    assert any(r["kind"] == "message" for r in received)


def test_send_exits_non_zero_for_a_gone_device(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    token = "gone-" + "x" * 40
    httpx.post(env["admin"]["fcm"] + "/_admin/unregister", json={"tokens": [token]})
    code = main(["send", "--channel", "fcm", "--to", token, "--title", "t", "--body", "b"])
    assert code == 1
    assert json.loads(capsys.readouterr().out)["outcome"] == "device_invalid"


def test_send_retries_a_503_then_delivers(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    target = env["targets"]["apns"]
    httpx.post(
        env["admin"]["apns"] + "/_admin/script",
        json={"responses": [{"status": 503, "retry_after": "0"}], "key": target},
    )
    code = main(["send", "--channel", "apns", "--to", target, "--title", "t", "--body", "b"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["attempts"] == 2, out


def test_gateways_serve_runs_in_a_subprocess(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "worker", "gateways", "serve", "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        state = json.loads(process.stdout.readline())
        assert json.loads((tmp_path / "gateways.json").read_text()) == state
        for base in state["admin"].values():
            assert httpx.get(base + "/_admin/received").json() == []
    finally:
        process.terminate()
        code = process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
    assert code == 0


def test_send_refuses_an_internal_webhook_url(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "send",
            "--channel",
            "webhook",
            "--to",
            "https://169.254.169.254/x",
            "--title",
            "t",
            "--body",
            "b",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["reason"] == "webhook:unsafe_destination"
