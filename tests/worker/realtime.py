"""Pieces for end-to-end tests of the real-time path: local gateways, a small planted
index, a catalog, rule configs, and a worker + scheduler pair reading them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from indexing import ModelParams, publish, read_events, save_model, train_model
from tests.indexing.conftest import BLOCKS, ITEMS_PER_BLOCK, planted_rows
from tests.worker.conftest import WorkerProcess
from worker.contract import Enqueue
from worker.policy.contact import holdout_bucket
from worker.policy.jobs import FireJob
from worker.rules import DEFAULT_RULES
from worker.service import ingest
from worker.service.runtime import Runtime
from worker.settings import Settings
from worker.store.pinned import PinnedPipeline


def build_planted_index(store: Path, seed: int = 0) -> str:
    """Train on planted blocks (users of block b touch only items b<b>-*) and publish."""
    log, _ = read_events(planted_rows(seed))
    version, _ = save_model(store, train_model(log, ModelParams()))
    publish(store, version, force=True)
    return version


def planted_catalog() -> list[dict[str, Any]]:
    return [
        {
            "item_id": f"b{b}-{j}",
            "title": f"Item {j} of block {b}",
            "category": f"block{b}",
            "price": 10.0 + j,
            "stock": 5,
            "url": f"https://shop.example/p/b{b}-{j}",
        }
        for b in range(BLOCKS)
        for j in range(ITEMS_PER_BLOCK)
    ]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(path: Path, rules: list[Mapping[str, Any]], **top: Any) -> Path:
    """A PUSHREC_CONFIG file: top-level settings, then one [[rules]] table per rule."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in top.items()]
    for rule in rules:
        lines.append("\n[[rules]]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in rule.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def rule(name: str, kind: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "cooldown_s": 0,
        "holdout_pct": 0,
        "title": "{{ items[0].title }}",
        "body": "{{ items | map(attribute='item_id') | join(',') }}",
    }
    base.update(fields)
    return base


class Gateways:
    """The four local gateways' admin endpoints, seen from the test."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.env: dict[str, str] = state["env"]
        self.targets: dict[str, str] = state["targets"]
        self._http = httpx.Client(timeout=10)

    def received(self, channel: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._http.get(
            f"{self.state['admin'][channel]}/_admin/received"
        ).json()
        return rows

    def accepted(self, channel: str) -> list[dict[str, Any]]:
        """Messages the gateway took (its `kind: message` records)."""
        return [r for r in self.received(channel) if r.get("kind") == "message"]

    def script(self, channel: str, responses: list[dict[str, Any]], key: str | None = None) -> None:
        body: dict[str, Any] = {"responses": responses}
        if key is not None:
            body["key"] = key
        self._http.post(
            f"{self.state['admin'][channel]}/_admin/script", json=body
        ).raise_for_status()

    def slow_down(self, channel: str, latency_ms: float) -> None:
        self._http.post(
            f"{self.state['admin'][channel]}/_admin/script", json={"latency_ms": latency_ms}
        ).raise_for_status()

    def hold(self, channel: str, held: bool = True) -> None:
        """While held, the gateway keeps each request open without looking at it."""
        self._http.post(
            f"{self.state['admin'][channel]}/_admin/script", json={"hold": held}
        ).raise_for_status()

    def _stats(self, channel: str) -> dict[str, int]:
        stats: dict[str, int] = self._http.get(
            f"{self.state['admin'][channel]}/_admin/stats"
        ).json()
        return stats

    def in_flight(self, channel: str) -> int:
        return int(self._stats(channel)["in_flight"])

    def max_in_flight(self, channel: str) -> int:
        return int(self._stats(channel)["max_in_flight"])

    def unregister(self, channel: str, *tokens: str) -> None:
        self._http.post(
            f"{self.state['admin'][channel]}/_admin/unregister", json={"tokens": list(tokens)}
        ).raise_for_status()

    def reset(self) -> None:
        for url in self.state["admin"].values():
            self._http.post(f"{url}/_admin/reset").raise_for_status()

    def close(self) -> None:
        self._http.close()


@contextmanager
def realtime_processes(
    settings: Settings, tmp_path: Path, env: dict[str, str], workers: int = 1
) -> Iterator[list[WorkerProcess]]:
    """`workers` worker processes on every queue, and one scheduler."""
    started: list[WorkerProcess] = []
    try:
        for n in range(workers):
            started.append(
                WorkerProcess(settings, tmp_path / f"worker{n}.log", f"rt{n}", 2, env=env)
            )
        started.append(
            WorkerProcess(
                settings,
                tmp_path / "scheduler.log",
                "scheduler",
                1,
                env=env,
                command=("scheduler", "--loglevel=INFO"),
                ready="is the leader",
            )
        )
        yield started
    finally:
        for process in started:
            process.stop()


@contextmanager
def gateway_shop(
    settings: Settings,
    gateways: Gateways,
    index_dir: Path,
    enqueue: Enqueue,
    **overrides: Any,
) -> Iterator[Runtime]:
    """A runtime in this process on the local gateways (FCM always; more through
    `overrides`), with a published planted index, the planted catalog and caps high
    enough not to get in a test's way. `enqueue` takes what it would send to the broker."""
    gateways.reset()
    build_planted_index(index_dir)
    env = gateways.env
    full = settings.model_copy(
        update={
            "fcm_url": env["PUSHREC_FCM_URL"],
            "fcm_credentials": Path(env["PUSHREC_FCM_CREDENTIALS"]),
            "fcm_project_id": env["PUSHREC_FCM_PROJECT_ID"],
            "cap_marketing_per_day": 100,
            "cap_total_per_day": 100,
            "index_store": index_dir,
            **overrides,
        }
    )
    rt = Runtime.open(full, enqueue=enqueue)
    ingest.upsert_items(rt, planted_catalog(), time.time())
    try:
        yield rt
    finally:
        rt.close()


def seed_shop(rt: Runtime, now: float) -> None:
    ingest.upsert_items(rt, planted_catalog(), now)


def register(rt: Runtime, user: str, channel: str, target: str, now: float, **prefs: Any) -> None:
    if channel == "webpush":
        subscription = json.loads(Path(target).read_text())
        ingest.register_device(
            rt, {"user_id": user, "channel": channel, "subscription": subscription}, now
        )
    else:
        ingest.register_device(rt, {"user_id": user, "channel": channel, "token": target}, now)
    ingest.set_preferences(
        rt,
        {"user_id": user, "consent": {"marketing": {"*": True}}, "timezone": "UTC", **prefs},
        now,
    )


# A config file's start for campaign tests: caps out of the way, and the segment of
# buyers quiet for 30 days; tests add their [[campaigns]].
LAPSED_CONFIG = """
cap_marketing_per_day = 100
cap_total_per_day = 100

[[segments]]
name = "lapsed"
min_orders = 1
dormant_days = 30
"""


def campaign_settings(config: Path) -> dict[str, object]:
    """The segments, campaigns and coupon pools of `config`, for the test's own runtime."""
    import tomllib

    from worker.campaigns import Campaign
    from worker.coupon_config import CouponPool
    from worker.segments import Segment

    raw = tomllib.loads(config.read_text())
    return {
        "segments": tuple(Segment.model_validate(s) for s in raw["segments"]),
        "campaigns": tuple(Campaign.model_validate(c) for c in raw["campaigns"]),
        "coupon_pools": tuple(CouponPool.model_validate(p) for p in raw.get("coupon_pools", [])),
        "cap_marketing_per_day": 100,
        "cap_total_per_day": 100,
    }


def fire_post_purchase(rt: Runtime, user: str, item: str, now: float | None = None) -> str:
    """`user` buys `item` and the post-purchase rule fires for it: the message's id."""
    now = time.time() if now is None else now
    ingest.track_one(
        rt,
        {"event_id": f"p-{user}", "user_id": user, "type": "purchase", "item_id": item, "ts": now},
        now,
        "d",
    )
    job = FireJob(
        rule="post_purchase",
        user_id=user,
        trigger_id=f"p-{user}",
        trigger_ts=now,
        items=(item,),
        extra={},
    )
    [decision] = rt.firer().fire_many([job], now)
    assert decision["action"] in {"queued", "held_out"}, decision
    return str(decision["message_id"])


def shopper(
    rt: Runtime, gateways: Gateways, prefix: str, now: float | None = None, **prefs: Any
) -> str:
    """A shopper with an FCM device, outside the post-purchase holdout."""
    user = next(u for u in (f"{prefix}{n}" for n in range(100)) if not held_out(u))
    register(rt, user, "fcm", gateways.targets["fcm"], time.time() if now is None else now, **prefs)
    return user


def held_out(user: str, rule: str = "post_purchase") -> bool:
    """Whether `user` falls in the holdout of the default rule `rule`."""
    [pct] = [r.holdout_pct for r in DEFAULT_RULES if r.name == rule]
    return holdout_bucket(rule, user) < pct


def pipeline_trips(
    monkeypatch: pytest.MonkeyPatch, starting: str = ""
) -> list[list[tuple[str, str]]]:
    """From now on, each pinned pipeline run (a single node's round trips): its commands
    as (name, key); with `starting`, from the first holding that command on."""
    ran: list[list[tuple[str, str]]] = []
    real = PinnedPipeline.execute

    def execute(pipe: PinnedPipeline, raise_on_error: bool = True) -> list[Any]:
        commands = [(str(a[0]), str(a[1]) if len(a) > 1 else "") for a, _ in pipe.command_stack]
        if ran or not starting or any(name == starting for name, _ in commands):
            ran.append(commands)
        return real(pipe, raise_on_error)

    monkeypatch.setattr(PinnedPipeline, "execute", execute)
    return ran
