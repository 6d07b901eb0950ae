"""The protocol on a tiny example where every number is worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from indexing import discovery_task, evaluate_rankings, read_events, split_time


def test_split_time_is_smallest_ts_covering_80_percent() -> None:
    # 10 events: 80% = 8 events must be <= T; sorted ts 1..8 -> T = 8
    assert split_time(np.arange(1, 11, dtype=np.float64)) == 8.0
    # ties: ts [1,1,1,1,5,5,5,5,5,9] -> <=1 covers 4, <=5 covers 9 >= 8 -> T = 5
    ts = np.array([1, 1, 1, 1, 5, 5, 5, 5, 5, 9], dtype=np.float64)
    assert split_time(ts) == 5.0
    # 3 events: need ceil(2.4) = 3 -> T = max
    assert split_time(np.array([3.0, 1.0, 2.0])) == 3.0


def _ev(n: int, user: str, item: str, ts: float, type_: str = "purchase") -> dict[str, object]:
    return {"event_id": str(n), "user_id": user, "item_id": item, "type": type_, "ts": ts}


def test_discovery_task_picks_test_users_and_truth_by_the_rules() -> None:
    rows = [
        # train period (ts < T)
        _ev(1, "alice", "A", 1),
        _ev(2, "alice", "B", 2),
        _ev(3, "bob", "A", 3),
        _ev(4, "bob", "C", 4),
        _ev(5, "carol", "D", 5),
        _ev(6, "dave", "E", 6, "view"),
        _ev(7, "bob", "B", 7),
        _ev(8, "alice", "C", 8, "view"),
        # test period: 20 events total, T = 16th smallest ts = 16
    ]
    rows += [_ev(100 + i, "filler", "A", 9 + i, "view") for i in range(7)]  # ts 9..15
    rows += [
        _ev(20, "alice", "D", 16),  # warm, new for alice -> truth
        _ev(21, "alice", "B", 17),  # alice bought B in train -> not truth
        _ev(22, "alice", "Z", 18),  # Z is cold (not in train) -> not truth
        _ev(23, "bob", "D", 19, "view"),  # not a purchase -> not truth
        _ev(24, "erin", "A", 20),  # erin has no train event -> not a test user
    ]
    log, _ = read_events(rows)
    task = discovery_task(log)
    assert task.split_ts == 16.0
    assert len(task.train) == 15 and len(task.test) == 5
    assert {log.user_ids[u]: [log.item_ids[i] for i in t] for u, t in task.truth.items()} == {
        "alice": ["D"]
    }
    assert not task.warm[log.item_ids.index("Z")]


def test_metrics_by_hand() -> None:
    truth = {
        1: np.array([10, 11, 12]),  # 3 relevant
        2: np.array([20]),  # 1 relevant
    }
    rankings = {
        1: [10, 99, 12, 98],  # hits at ranks 1 and 3
        2: [97, 96],  # no hit
    }
    m = evaluate_rankings(rankings, truth, n_catalog=50, ks=(2, 4))
    # K=2: user1 top [10, 99] -> 1 hit / min(2,3)=2 -> 0.5; user2 0 -> recall 0.25
    assert m["recall@2"] == pytest.approx(0.25)
    # per-user recalls 0.5 and 0: sample sd 0.354, standard error of the mean 0.25
    assert m["recall@2_se"] == pytest.approx(math.sqrt(0.125 / 2))
    # NDCG@2 user1: dcg = 1/log2(2) = 1; idcg = 1 + 1/log2(3); user2 0
    assert m["ndcg@2"] == pytest.approx((1 / (1 + 1 / math.log2(3))) / 2)
    assert m["hr@2"] == pytest.approx(0.5)
    # coverage@2: {10, 99, 97, 96} / 50
    assert m["coverage@2"] == pytest.approx(4 / 50)
    # K=4: user1 2 hits / min(4,3)=3; user2 0 hits / 1
    assert m["recall@4"] == pytest.approx((2 / 3) / 2)
    dcg1 = 1 + 1 / math.log2(4)
    idcg1 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@4"] == pytest.approx((dcg1 / idcg1) / 2)
    assert m["hr@4"] == pytest.approx(0.5)
    assert m["coverage@4"] == pytest.approx(6 / 50)
    assert m["users"] == 2
    one = evaluate_rankings(rankings, {1: truth[1]}, n_catalog=50, ks=(2,))
    assert "recall@2_se" not in one  # one user: the spread is unknown, not zero
