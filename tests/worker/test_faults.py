"""Faults with real processes: a push worker SIGKILLed just before the gateway call and
just after the gateway answered (before the ledger write), the leader scheduler
SIGKILLed, and gateways answering 429 with `Retry-After: 3600`, 503 storms, timeouts and
410s at once. Real `pushrec worker` / `pushrec scheduler` processes, real Redis, the local
gateways of push/testing; messages are made by the test's own `Firer`, as an activity
worker would."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from push.messages import web_push_topic
from push.testing.serve import local_gateways
from tests.redis_server import private_redis_server
from tests.worker.conftest import WorkerProcess, node_name, wait_for
from tests.worker.realtime import (
    Gateways,
    build_planted_index,
    register,
    rule,
    seed_shop,
    write_config,
)
from tests.worker.sharded import delayed_sizes
from worker.client import PushrecClient
from worker.delivery.outbox import message_id
from worker.policy.jobs import FireJob, Trigger
from worker.service.runtime import Runtime
from worker.service.userview import user_view
from worker.settings import Settings

pytestmark = pytest.mark.integration

RULE = rule("cross_sell", "post_purchase", delay_s=0, items=2)
CONNECTION_FIELDS = {
    "redis_url", "broker_url", "key_prefix", "broker_key_prefix", "state_dir", "queue_activity",
    "queue_push", "queue_maintenance", "visibility_timeout_s", "task_time_limit_s",
}  # fmt: skip


@pytest.fixture
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    """Fresh gateways and credentials per test: the local APNs, as Apple's, refuses a new
    provider token for a key within 20 minutes of the last, and each test's processes
    mint their own (their token cache lives under the test's key prefix)."""
    with local_gateways(tmp_path_factory.mktemp("gateways")) as state:
        gw = Gateways(state)
        yield gw
        gw.close()


def quick(settings: Settings) -> Settings:
    """The shortest visibility timeout the settings allow: a dead worker's task comes
    back within seconds."""
    return settings.model_copy(update={"visibility_timeout_s": 10, "task_time_limit_s": 8})


@dataclass
class Shop:
    """The catalog, the rule and the gateways on one Redis; the processes it started."""

    settings: Settings
    env: dict[str, str]
    rt: Runtime
    tmp_path: Path
    started: list[WorkerProcess] = field(default_factory=list)

    def worker(self, name: str, concurrency: int = 1) -> WorkerProcess:
        """A `pushrec worker` on every queue."""
        command = (
            "worker", f"--concurrency={concurrency}", f"--name={node_name(name)}",
            "--loglevel=INFO",
        )  # fmt: skip
        return self._start(name, command, " ready.")

    def scheduler(self, name: str, ready: str = "is the leader") -> WorkerProcess:
        return self._start(name, ("scheduler", "--loglevel=INFO"), ready)

    def _start(self, name: str, command: tuple[str, ...], ready: str) -> WorkerProcess:
        process = WorkerProcess(
            self.settings, self.tmp_path / f"{name}.log", name, 1, env=self.env,
            command=command, ready=ready,
        )  # fmt: skip
        self.started.append(process)
        return process

    def fire(self, *users: str) -> list[str]:
        """Fire the rule for each shopper now, together (one deliver task); their
        message ids."""
        now = time.time()
        jobs = [FireJob("cross_sell", user, f"p-{user}", now, ("b0-1",), {}) for user in users]
        decisions = self.rt.firer().fire_many(jobs, now)
        assert [d["action"] for d in decisions] == ["queued"] * len(users), decisions
        return [message_id("cross_sell", user, f"p-{user}") for user in users]

    def ledger(self, mid: str) -> list[str]:
        """Each device's ledger entry of the message (`sending` without its owner)."""
        state = self.rt.outbox.state(mid)
        return sorted(v.split(":")[0] for k, v in state.items() if k.startswith("dev:"))


@contextmanager
def open_shop(base: Settings, tmp_path: Path, gateways: Gateways, **top: Any) -> Iterator[Shop]:
    """A shop on `base`'s Redis and queues: the rule, the planted index, the catalog;
    `top` are settings for the test runtime and, through the config file, the processes."""
    gateways.reset()
    store = tmp_path / "index"
    build_planted_index(store)
    top = {"cap_marketing_per_day": 100, "cap_total_per_day": 100, **top}
    config = write_config(tmp_path / "pushrec.toml", [RULE], **top)
    env = {**gateways.env, "PUSHREC_CONFIG": str(config), "PUSHREC_INDEX_STORE": str(store)}
    named = {k.removeprefix("PUSHREC_").lower(): v for k, v in env.items() if k != "PUSHREC_CONFIG"}
    settings = Settings.load(
        **base.model_dump(include=CONNECTION_FIELDS), **named, rules=[RULE], **top
    )
    client = PushrecClient(
        settings.effective_broker_url,
        broker_key_prefix=settings.broker_key_prefix,
        queues={
            "activity": settings.queue_activity,
            "push": settings.queue_push,
            "maintenance": settings.queue_maintenance,
        },
    )
    rt = Runtime.open(settings, enqueue=lambda task, kwargs: client.send(task, **kwargs))
    shop = Shop(settings, env, rt, tmp_path)
    try:
        seed_shop(rt, time.time())
        yield shop
    finally:
        for process in shop.started:
            process.stop()
        rt.close()
        client.close()


def fcm_accepted(gateways: Gateways, token: str) -> list[dict[str, Any]]:
    return [r["message"] for r in gateways.accepted("fcm") if r["message"]["token"] == token]


def apns_accepted(gateways: Gateways, device: str) -> list[dict[str, Any]]:
    return [r for r in gateways.accepted("apns") if r["device"] == device]


def subscription_id(gateways: Gateways) -> str:
    endpoint = json.loads(Path(gateways.targets["webpush"]).read_text())["endpoint"]
    return str(urlsplit(endpoint).path.rsplit("/", 1)[1])


def webpush_path(gateways: Gateways) -> str:
    endpoint = json.loads(Path(gateways.targets["webpush"]).read_text())["endpoint"]
    return str(urlsplit(endpoint).path)


def test_push_worker_killed_just_before_the_gateway_call_sends_exactly_once(
    settings: Settings, tmp_path: Path, gateways: Gateways
) -> None:
    """A fresh process has no FCM access token: its first send asks the token endpoint,
    the last step before the message request. The gateway holds that request, so the
    worker is SIGKILLed with the device claimed (`sending`) and nothing sent. The task
    comes back after the visibility timeout (same task id, so the claim is its own) and
    the message goes out once."""
    with open_shop(quick(settings), tmp_path, gateways) as shop:
        token = f"{gateways.targets['fcm']}-before"
        register(shop.rt, "u0-k1", "fcm", token, time.time())
        first = shop.worker("k1")
        gateways.hold("fcm")
        try:
            [mid] = shop.fire("u0-k1")
            wait_for(
                lambda: gateways.in_flight("fcm") == 1 and shop.ledger(mid) == ["sending"],
                what="the token request held, the device claimed",
            )
            assert gateways.received("fcm") == []  # neither the token nor the message
            first.kill()
        finally:
            gateways.hold("fcm", held=False)
        shop.worker("k2")
        wait_for(lambda: shop.ledger(mid) == ["sent"], timeout=40, what="redelivered send")
        time.sleep(1)  # nothing more may follow
        assert len(fcm_accepted(gateways, token)) == 1
        assert shop.rt.audit.stats(["cross_sell"])["cross_sell"]["delivered"] == 1


def _ledger_write_waits(admin: redis.Redis) -> bool:
    """A client stopped by CLIENT PAUSE WRITE at RPUSH: the first command of the
    settle pipeline (the attempts list), the ledger write after the gateway answers."""
    return any("b" in c["flags"] and c["cmd"] == "rpush" for c in admin.client_list())


def test_push_worker_killed_after_the_answer_before_the_ledger_write_sends_one_duplicate(
    settings: Settings, tmp_path: Path, gateways: Gateways
) -> None:
    """The gateways hold one message's three requests (FCM, APNs, Web Push); Redis is
    paused for writes (a private server: the pause is server-wide); the gateways answer
    and take the message; the worker, with the answers in hand, waits in Redis at its
    ledger write and is SIGKILLed there. Its task comes back after the visibility
    timeout, finds every device still `sending` under its own id and sends again: each
    device gets the message exactly twice, both copies with the same collapse id
    (Android notification tag, apns-collapse-id, Web Push Topic), so the phone shows one
    notification; the message counts as delivered once (docs/realtime.md, "Failures")."""
    channels = ("fcm", "apns", "webpush")
    with (
        private_redis_server() as url,
        open_shop(
            quick(settings).model_copy(update={"redis_url": url}), tmp_path, gateways
        ) as shop,
    ):
        now = time.time()
        fcm, apns = f"{gateways.targets['fcm']}-after", uuid.uuid4().hex * 2
        register(shop.rt, "u1-k", "fcm", fcm, now)
        register(shop.rt, "u1-k", "apns", apns, now)
        register(shop.rt, "u1-k", "webpush", gateways.targets["webpush"], now)
        warm = f"{gateways.targets['fcm']}-warm"
        register(shop.rt, "u1-warm", "fcm", warm, now)
        first = shop.worker("a1")
        shop.fire("u1-warm")  # the process gets its FCM access token
        wait_for(lambda: len(fcm_accepted(gateways, warm)) == 1, what="warm-up push")
        admin = redis.Redis.from_url(url, decode_responses=True)
        for channel in channels:
            gateways.hold(channel)
        try:
            [mid] = shop.fire("u1-k")
            wait_for(
                lambda: all(gateways.in_flight(c) == 1 for c in channels),
                what="three requests held",
            )
            admin.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")
            for channel in channels:
                gateways.hold(channel, held=False)
            wait_for(lambda: _ledger_write_waits(admin), what="the worker at its ledger write")
            first.kill()
            # unpaused before Redis saw the connection close, it would run the writes
            wait_for(lambda: not _ledger_write_waits(admin), what="Redis drops the dead client")
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")
            for channel in channels:
                gateways.hold(channel, held=False)
        assert shop.ledger(mid) == ["sending"] * 3  # the answers died with the worker
        assert shop.rt.outbox.attempts(mid) == []
        shop.worker("a2")
        wait_for(lambda: shop.ledger(mid) == ["sent"] * 3, timeout=40, what="redelivered sends")
        time.sleep(1)  # nothing more may follow

        copies = fcm_accepted(gateways, fcm)
        assert len(copies) == 2
        assert {m["android"]["notification"]["tag"] for m in copies} == {mid}
        assert {m["apns"]["headers"]["apns-collapse-id"] for m in copies} == {mid}
        assert {m["webpush"]["headers"]["Topic"] for m in copies} == {web_push_topic(mid)}
        apns_copies = apns_accepted(gateways, apns)
        assert [r["headers"]["apns-collapse-id"] for r in apns_copies] == [mid, mid]
        sub = subscription_id(gateways)
        web = [r for r in gateways.accepted("webpush") if r["subscription"] == sub]
        assert [r["headers"]["topic"] for r in web] == [web_push_topic(mid)] * 2
        # counted once: the warm-up message and this one
        assert shop.rt.audit.stats(["cross_sell"])["cross_sell"]["delivered"] == 2
        admin.close()


def test_leader_scheduler_killed_another_leads_within_the_lease_and_each_job_fires_once(
    settings: Settings, tmp_path: Path, gateways: Gateways
) -> None:
    """Two schedulers, one leads; jobs fall due one by one before, across and after the
    leader's SIGKILL. The other leads once the dead leader's lease runs out, and every
    job fires exactly once: each shopper gets one push, the delayed set ends empty."""
    lease_s = 4.0
    with open_shop(settings, tmp_path, gateways, scheduler_lease_s=lease_s) as shop:
        rt = shop.rt
        users = [f"u{n % 4}-s{n}" for n in range(12)]
        tokens = {user: f"{gateways.targets['fcm']}-{user}" for user in users}
        for user, token in tokens.items():
            register(rt, user, "fcm", token, time.time())
        shop.worker("s-worker", concurrency=2)
        leader = shop.scheduler("s1")
        follower = shop.scheduler("s2", ready=" follows: another one leads")
        start = time.time()
        for n, user in enumerate(users):  # one due every 0.75 s, over about two leases
            trigger = Trigger("cross_sell", user, f"p-{user}", start, ("b0-1",), start + 0.75 * n)
            rt.delayed.schedule(trigger.job(), trigger.due)
        wait_for(lambda: len(fcm_accepted(gateways, tokens[users[0]])) == 1, what="first job")
        leader.kill()
        wait_for(
            lambda: "is the leader" in follower.log(),
            timeout=lease_s + 3,  # the lease, one poll of the follower, scheduling slack
            what="a new leader within the lease",
        )
        wait_for(
            lambda: all(fcm_accepted(gateways, t) for t in tokens.values()),
            timeout=30,
            what="every job fired",
        )
        time.sleep(1.5)  # nothing more may follow
        assert {
            user: len(fcm_accepted(gateways, t)) for user, t in tokens.items()
        } == dict.fromkeys(users, 1)
        assert [len(rt.audit.decisions(user)) for user in users] == [1] * len(users)
        assert rt.audit.stats(["cross_sell"])["cross_sell"]["fired"] == len(users)
        assert delayed_sizes(rt) == (0, 0, 0)


def test_429_retry_after_an_hour_is_parked_not_held_and_never_redelivered(
    settings: Settings, tmp_path: Path, gateways: Gateways
) -> None:
    """The deliver task ends (its broker message acked) with the retry parked in the
    delayed set an hour ahead; past the visibility timeout nothing was redelivered and
    the gateway saw one request."""
    base = quick(settings)
    with open_shop(base, tmp_path, gateways) as shop:
        rt, token = shop.rt, f"{gateways.targets['fcm']}-429"
        register(rt, "u2-r", "fcm", token, time.time())
        gateways.script("fcm", [{"status": 429, "retry_after": "3600"}], key=token)
        worker = shop.worker("r1")
        [mid] = shop.fire("u2-r")
        wait_for(lambda: rt.outbox.state(mid).get("state") == "retrying", what="retry parked")
        due = rt.delayed.due_at(f"deliver:{mid}")
        assert due is not None and abs(due - (time.time() + 3600)) < 60
        prefix = base.broker_key_prefix
        wait_for(lambda: rt.redis.hlen(f"{prefix}unacked") == 0, what="the deliver task acked")
        time.sleep(base.visibility_timeout_s + 3)  # past the timeout and a restore sweep
        assert rt.redis.hlen(f"{prefix}unacked") == 0
        assert rt.redis.llen(f"{prefix}{base.queue_push}") == 0
        [request] = [
            r for r in gateways.received("fcm") if r.get("message", {}).get("token") == token
        ]
        assert (request["kind"], request["status"]) == ("scripted", 429)
        assert worker.log().count("Task pushrec.deliver[") == 2  # received, succeeded: once
        assert rt.delayed.due_at(f"deliver:{mid}") == due
        assert rt.outbox.state(mid)["state"] == "retrying"


def test_503_storm_timeouts_and_410s_at_once_end_in_the_policys_states(
    settings: Settings, tmp_path: Path, gateways: Gateways
) -> None:
    """One deliver task for nine shoppers, each device on a different behaviour:
    five FCM devices in a 503 storm (five failures open FCM's breaker, so their retries
    fail on it, retries being exhausted at `push_max_attempts` = 2, without another
    request); a Web Push device answered 503 once; an APNs device whose first answer
    comes after the client's 10 s read timeout; an APNs device gone (410); a webhook that
    answers at once. Retries are parked and come back through the scheduler."""
    with open_shop(settings, tmp_path, gateways, push_max_attempts=2) as shop:
        rt, now = shop.rt, time.time()
        storm = {f"u0-storm{n}": f"{gateways.targets['fcm']}-storm{n}" for n in range(5)}
        for user, token in storm.items():
            register(rt, user, "fcm", token, now)
            gateways.script("fcm", [{"status": 503}] * 3, key=token)
        register(rt, "u1-flaky", "webpush", gateways.targets["webpush"], now)
        gateways.script("webpush", [{"status": 503}], key=webpush_path(gateways))
        slow, gone = uuid.uuid4().hex * 2, uuid.uuid4().hex * 2
        register(rt, "u2-slow", "apns", slow, now)
        gateways.script("apns", [{"status": 503, "delay_ms": 12_000}], key=slow)
        register(rt, "u3-gone", "apns", gone, now - 60)
        gateways.unregister("apns", gone)
        register(rt, "u3-ok", "webhook", gateways.targets["webhook"], now)
        shop.worker("storm", concurrency=2)
        shop.scheduler("storm-scheduler")
        users = [*storm, "u1-flaky", "u2-slow", "u3-gone", "u3-ok"]
        mids = dict(zip(users, shop.fire(*users), strict=True))

        def settled() -> bool:
            states = [rt.outbox.state(mid).get("state") for mid in mids.values()]
            return all(state in {"sent", "failed"} for state in states)

        wait_for(settled, timeout=40, what="every message settled")
        time.sleep(1)  # nothing more may follow
        state = {user: rt.outbox.state(mid)["state"] for user, mid in mids.items()}
        attempts = {user: rt.outbox.attempts(mid) for user, mid in mids.items()}

        fcm_rows = gateways.received("fcm")
        for user, token in storm.items():
            assert state[user] == "failed"
            first, last = attempts[user]
            assert (first["status"], first["outcome"]) == (503, "retry")
            assert last["reason"] == "retries_exhausted:fcm:breaker_open"
            mine = [r for r in fcm_rows if r.get("message", {}).get("token") == token]
            assert [(r["kind"], r["status"]) for r in mine] == [("scripted", 503)]
        [route] = rt.redis.zrange(rt.keys.breaker_routes, 0, -1)  # FCM's alone opened
        assert route.startswith("fcm:")

        assert state["u1-flaky"] == "sent"
        assert [a["outcome"] for a in attempts["u1-flaky"]] == ["retry", "delivered"]
        assert len(gateways.accepted("webpush")) == 1

        assert state["u2-slow"] == "sent", attempts["u2-slow"]
        timed_out, delivered = attempts["u2-slow"]
        assert (timed_out["outcome"], timed_out["reason"]) == ("retry", "apns:timeout")
        assert delivered["outcome"] == "delivered"
        assert len(apns_accepted(gateways, slow)) == 1

        assert state["u3-gone"] == "failed"
        assert attempts["u3-gone"][-1]["outcome"] == "device_invalid"
        assert apns_accepted(gateways, gone) == []
        [device] = user_view(rt.redis, rt.keys, "u3-gone", time.time())["devices"]
        assert not device["active"]

        assert state["u3-ok"] == "sent" and len(attempts["u3-ok"]) == 1
        assert len(gateways.accepted("webhook")) == 1
        # every device took the message at most once
        accepted = [
            *(m["token"] for m in (r["message"] for r in gateways.accepted("fcm"))),
            *(r["device"] for r in gateways.accepted("apns")),
            *(r["subscription"] for r in gateways.accepted("webpush")),
        ]
        assert len(accepted) == len(set(accepted)) == 2
