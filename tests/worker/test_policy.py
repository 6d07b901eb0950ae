"""The contact policy on a real Redis: each step, in order, recorded."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from worker.policy.contact import ContactPolicy, PolicyReads, Verdict, holdout_bucket
from worker.rules import Rule
from worker.service.runtime import Runtime
from worker.store.scripts import Scripts

pytestmark = pytest.mark.redis_kinds  # a single node and a cluster

NOON_BERLIN = datetime(2026, 6, 10, 10, 0, tzinfo=UTC).timestamp()
RULE = Rule(name="r", kind="post_purchase", title="t", body="b", cooldown_s=0)
CONSENT = {"consent:marketing:*": "1", "timezone": "Europe/Berlin"}


class Policy:
    """The contact policy on the test's Redis, one call (and round trip) at a time."""

    def __init__(self, runtime: Runtime) -> None:
        self.redis = runtime.redis
        self.policy = ContactPolicy(runtime.keys, Scripts.register(runtime.redis), runtime.settings)

    def decide(
        self,
        prefs: dict[str, str],
        rule: Rule = RULE,
        user: str = "u1",
        now: float = NOON_BERLIN,
        msg: str = "m1",
    ) -> Verdict:
        pipe = self.redis.pipeline()
        self.policy.queue_reads(pipe, rule, user, msg, now)
        reads = PolicyReads.from_replies(iter(pipe.execute()))
        return self.policy.decide(rule, user, ["i1", "i2"], ["fcm", "webhook"], prefs, now, reads)

    def reserve(self, rule: Rule, user: str, msg: str, now: float) -> str:
        pipe = self.redis.pipeline()
        self.policy.queue_reserve(pipe, rule, user, msg, now)
        return str(pipe.execute()[0])

    def record_items(self, user: str, items: list[str], now: float) -> None:
        pipe = self.redis.pipeline()
        self.policy.record_items(user, items, now, pipe)
        pipe.execute()


@pytest.fixture
def policy(runtime: Runtime) -> Policy:
    return Policy(runtime)


def test_no_consent_means_no_marketing(policy: Policy) -> None:
    verdict = policy.decide({})
    assert verdict.action == "suppress"
    assert verdict.steps[0].name == "consent" and "no consent" in verdict.steps[0].detail


def test_channel_specific_consent_overrides_the_wildcard(policy: Policy) -> None:
    verdict = policy.decide({**CONSENT, "consent:marketing:webhook": "0"})
    assert verdict.action == "send"
    assert verdict.channels == ["fcm"]
    assert [s.name for s in verdict.steps] == [
        "consent",
        "caps",
        "quiet_hours",
        "no_repeat",
        "holdout",
    ]


def test_quiet_hours_defer_marketing_to_their_local_end(policy: Policy) -> None:
    late = datetime(2026, 6, 10, 21, 30, tzinfo=UTC).timestamp()  # 23:30 in Berlin
    verdict = policy.decide({**CONSENT, "quiet_hours": "22:00-08:00"}, now=late)
    assert verdict.action == "defer"
    assert verdict.defer_until == datetime(2026, 6, 11, 6, 0, tzinfo=UTC).timestamp()


def test_daily_marketing_cap_holds_under_concurrent_sends(policy: Policy, runtime: Runtime) -> None:
    cap = runtime.settings.cap_marketing_per_day
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(lambda n: policy.reserve(RULE, "u1", f"m{n}", NOON_BERLIN), range(20))
        )
    assert results.count("ok") == cap
    assert set(results) == {"ok", "cap_day"}
    assert policy.decide(CONSENT, msg="m-next").reason == "caps: cap_day"


def test_rule_cooldown_blocks_a_second_message_of_that_rule(policy: Policy) -> None:
    rule = Rule(name="slow", kind="post_purchase", title="t", body="b", cooldown_s=3600)
    assert policy.reserve(rule, "u1", "m1", NOON_BERLIN) == "ok"
    assert policy.reserve(rule, "u1", "m1", NOON_BERLIN + 5) == "already"
    assert policy.reserve(rule, "u1", "m2", NOON_BERLIN + 60) == "cooldown"
    assert policy.reserve(rule, "u1", "m3", NOON_BERLIN + 3601) == "ok"


def test_items_pushed_recently_are_not_pushed_again(policy: Policy) -> None:
    policy.record_items("u1", ["i1"], NOON_BERLIN - 3600)
    verdict = policy.decide(CONSENT)
    assert verdict.items == ["i2"]
    policy.record_items("u1", ["i2"], NOON_BERLIN - 60)
    assert policy.decide(CONSENT).reason == "no_repeat: every candidate was pushed recently"


def test_holdout_is_deterministic_and_near_its_share(policy: Policy) -> None:
    rule = Rule(name="h", kind="post_purchase", title="t", body="b", holdout_pct=10)
    verdicts = {u: policy.decide(CONSENT, rule=rule, user=str(u), msg=f"m{u}") for u in range(4000)}
    held = [u for u, v in verdicts.items() if v.cell == "holdout"]
    assert 0.08 < len(held) / 4000 < 0.12
    assert all(holdout_bucket("h", str(u)) < 10 for u in held)
    # held out where a treated shopper is sent: after every other step, message and all
    assert {v.action for v in verdicts.values()} == {"send"}
    assert all(verdicts[u].steps[-1].verdict == "held_out" and verdicts[u].items for u in held)
