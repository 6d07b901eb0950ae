"""The outbox ledger: one record per message id, one live send per device."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.clock import FIXED_NOW
from worker.delivery.outbox import SEND_LEASE_S, MessageRecord, message_id
from worker.service.runtime import Runtime

pytestmark = pytest.mark.redis_kinds  # a single node and a cluster

NOW = FIXED_NOW  # leases and due times are compared with the `now` passed in


def record(mid: str) -> MessageRecord:
    return MessageRecord(
        id=mid, rule="r", user_id="u", trigger_id="t", items=["a"], title="t",
        body="b", purpose="marketing", channels=["fcm"], created_at=NOW,
    )  # fmt: skip


def test_message_ids_are_stable_and_created_once(runtime: Runtime) -> None:
    mid = message_id("cart", "u1", "e1")
    assert mid == message_id("cart", "u1", "e1") != message_id("cart", "u1", "e2")
    assert len(mid) <= 64
    assert runtime.outbox.create_many([record(mid)]) == [(True, "", True)]
    assert runtime.outbox.create_many([record(mid), record("m2")]) == [
        (False, "queued", False),
        (True, "", True),
    ]


def test_two_deliveries_of_one_message_never_both_send_to_a_device(runtime: Runtime) -> None:
    mid = message_id("r", "u", "t")
    runtime.outbox.create_many([record(mid)])

    def claim(owner: str, now: float) -> bool:
        [claimed] = runtime.outbox.claim_devices([(mid, "d1")], owner, now)
        return claimed

    with ThreadPoolExecutor(8) as pool:
        claims = list(pool.map(lambda n: claim(f"task{n}", NOW), range(16)))
    assert claims.count(True) == 1
    winner = f"task{claims.index(True)}"
    assert claim(winner, NOW + 1)  # its own redelivery
    assert not claim("other", NOW + 1)
    assert claim("other", NOW + SEND_LEASE_S + 1)  # owner died
    pipe = runtime.redis.pipeline()
    runtime.outbox.settle_device(mid, "d1", "sent", pipe)
    pipe.execute()
    assert not claim("late", NOW + 10 * SEND_LEASE_S)
