"""docker-compose.yml and its config stay runnable: every command parses with the real
CLI, every PUSHREC_ variable is a setting, the sample rules load and their templates
compile. (No Docker here: this checks what pushrec itself would refuse.)"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import indexing
from worker.cli import build_parser, main
from worker.firing.compose import rule_templates
from worker.settings import CONFIG_ENV, ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE.read_text())["services"]
    return {name: s for name, s in services.items() if s.get("image", "").startswith("pushrec")}


def test_compose_runs_the_worker_processes_the_readme_names() -> None:
    commands = {name: s["command"][0] for name, s in _services().items()}
    assert commands == {
        "seed": "index", "activity": "worker", "push": "worker", "scheduler": "scheduler",
    }  # fmt: skip


def test_compose_seeds_a_first_index_once_before_the_workers_start(tmp_path: Path) -> None:
    """`seed` builds from the shipped sample, into the store every worker reads, and
    leaves a published index alone; the workers wait for it to finish."""
    services = _services()
    seed = services["seed"]
    assert seed["restart"] == "no"
    assert {v.split(":")[1] for v in seed["volumes"]} >= {"/var/lib/pushrec/index"}
    for name in ("activity", "push", "scheduler"):
        assert services[name]["depends_on"]["seed"] == {
            "condition": "service_completed_successfully"
        }
    store = tmp_path / "index"
    args = [*seed["command"], "--out", str(store)]
    assert main(args) == 0
    first = indexing.current_version(store)
    assert main(args) == 0  # ran again: the published index stays
    assert indexing.list_versions(store) == [first]


def test_compose_flower_watches_the_workers_broker_on_localhost_only() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())["services"]
    flower = raw["flower"]
    broker = _services()["activity"]["environment"]["PUSHREC_BROKER_URL"]
    assert f"--broker={broker}" in flower["command"] and "flower" in flower["command"]
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"])


@pytest.mark.parametrize("name", sorted(_services()))
def test_compose_command_parses(name: str) -> None:
    args = build_parser().parse_args(_services()[name]["command"])
    assert callable(args.handler)


def test_compose_queues_cover_every_queue_once() -> None:
    consumed = []
    for service in _services().values():
        args = build_parser().parse_args(service["command"])
        if args.command == "worker":
            consumed += args.queues.split(",")
    assert sorted(consumed) == ["activity", "maintenance", "push"]


def test_compose_environment_names_real_settings() -> None:
    fields = set(Settings.model_fields)
    for service in _services().values():
        for var in service["environment"]:
            assert var == CONFIG_ENV or var[len(ENV_PREFIX) :].lower() in fields, var


def test_sample_config_loads_and_its_templates_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    mounts = [v for s in _services().values() for v in s["volumes"] if v.endswith(":ro")]
    config = {re.sub(r":.*", "", m) for m in mounts}
    assert config == {"./deploy/pushrec.toml"}
    for var in [v for v in os.environ if v.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(var)
    monkeypatch.setenv(CONFIG_ENV, str(ROOT / "deploy" / "pushrec.toml"))
    settings = Settings.load()
    assert {r.name for r in settings.rules} == {"cart_abandoned", "post_purchase"}
    assert rule_templates(settings.rules).names() == ["cart_abandoned", "post_purchase"]


def test_compose_s3_profile_wires_the_object_store_to_every_pushrec_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--profile s3` adds SeaweedFS creating the bucket; every pushrec service waits for
    it when present, and the `.env` lines the file documents give valid settings."""
    text = COMPOSE.read_text()
    seaweedfs = yaml.safe_load(text)["services"]["seaweedfs"]
    assert seaweedfs["profiles"] == ["s3"]
    assert "-bucket=pushrec" in seaweedfs["command"]
    for name, service in _services().items():
        assert service["depends_on"]["seaweedfs"]["required"] is False, name
        assert "PUSHREC_INDEX_STORE" in service["environment"], name
    documented = dict(
        re.findall(r"^#\s+((?:PUSHREC|AWS)_[A-Z0-9_]+)=(\S+)$", text, flags=re.MULTILINE)
    )
    assert documented["PUSHREC_INDEX_STORE"] == "s3://pushrec/index"
    assert documented["PUSHREC_S3_ENDPOINT_URL"] == "http://seaweedfs:8333"
    for var in [v for v in os.environ if v.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(var)
    for var, value in documented.items():
        monkeypatch.setenv(var, value)
    settings = Settings.load()
    assert settings.index_store_location == "s3://pushrec/index"
    assert settings.s3_endpoint_url == "http://seaweedfs:8333"
