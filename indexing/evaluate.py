"""The "next-period discovery" evaluation protocol and its metrics.

Protocol, exactly as issue 3 states it:

1. Split time T = the smallest event timestamp such that at least 80% of all events have
   ts <= T. Train on ts < T, test on ts >= T (ties at T go to test).
2. Test users have >= 1 train event and >= 1 test-period purchase of a warm item (an item
   seen in train) that they never interacted with in train; their ground truth is that set.
3. Recommend top K excluding the user's train items (and never an item unseen in train).
4. recall@K = hits / min(K, |truth|); NDCG@K with binary gains (ideal DCG over
   min(K, |truth|) hits); HR@K = 1 if any hit; means over test users. Catalog coverage@K =
   distinct recommended items / warm items.

Validation for hyperparameters is the same split applied to the train period only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from indexing.errors import EmptyDataError
from indexing.events import EventLog

__all__ = [
    "DiscoveryTask",
    "Metrics",
    "discovery_task",
    "evaluate_rankings",
    "split_time",
]


def split_time(ts: npt.NDArray[np.float64], fraction: float = 0.8) -> float:
    """The smallest value T of `ts` such that at least `fraction` of `ts` are <= T."""
    n = int(ts.shape[0])
    if n == 0:
        raise EmptyDataError("no events to split")
    # m = ceil(fraction * n) in exact arithmetic for the default 4/5
    m = (4 * n + 4) // 5 if fraction == 0.8 else math.ceil(fraction * n)
    return float(np.partition(ts, m - 1)[m - 1])


@dataclass(frozen=True)
class DiscoveryTask:
    """One split of the protocol.

    train, test: the events before / from T (same id tables as the input log).
    warm: bool (n_items,) items with a train event. train_items: per user code, the set of
    item codes the user touched in train. truth: user code -> sorted int array of item codes.
    """

    split_ts: float
    train: EventLog
    test: EventLog
    warm: npt.NDArray[np.bool_]
    train_items: Mapping[int, frozenset[int]]
    truth: Mapping[int, npt.NDArray[np.int64]]

    @property
    def users(self) -> npt.NDArray[np.int64]:
        """Int (n_test_users,): test user codes, sorted."""
        return np.array(sorted(self.truth), dtype=np.int64)


def discovery_task(log: EventLog, fraction: float = 0.8) -> DiscoveryTask:
    """Split `log` by the protocol and derive the test users and their ground truth."""
    t = split_time(log.ts, fraction)
    before = log.ts < t
    train, test = log.select(before), log.select(~before)
    warm = np.zeros(len(log.item_ids), dtype=bool)
    warm[train.items] = True
    pairs = np.unique(train.users.astype(np.int64) * len(log.item_ids) + train.items)
    train_items: dict[int, set[int]] = {}
    for u, i in zip(
        (pairs // len(log.item_ids)).tolist(), (pairs % len(log.item_ids)).tolist(), strict=True
    ):
        train_items.setdefault(u, set()).add(i)
    buys = test.type_mask("purchase")
    truth: dict[int, set[int]] = {}
    for u, i in zip(test.users[buys].tolist(), test.items[buys].tolist(), strict=True):
        seen = train_items.get(u)
        if seen is None or not warm[i] or i in seen:
            continue
        truth.setdefault(u, set()).add(i)
    return DiscoveryTask(
        split_ts=t,
        train=train,
        test=test,
        warm=warm,
        train_items={u: frozenset(s) for u, s in train_items.items()},
        truth={u: np.array(sorted(s), dtype=np.int64) for u, s in truth.items()},
    )


Metrics = dict[str, float]


def evaluate_rankings(
    rankings: Mapping[int, Sequence[int]],
    truth: Mapping[int, npt.NDArray[np.int64]],
    n_catalog: int,
    ks: Sequence[int] = (10, 20),
) -> Metrics:
    """Mean recall/NDCG/HR@K over the users of `truth`, and coverage@K over `n_catalog`.

    rankings: user code -> ranked item codes (at least max(ks) long when possible; a missing
    user counts as an empty ranking). Keys of the result: `recall@10`, `ndcg@10`, `hr@10`,
    `coverage@10`, ... and `users`; with two users or more, `recall@10_se` is the standard
    error of the mean recall over users (the quality gate's yardstick for chance).
    """
    if not truth:
        raise EmptyDataError("no test users")
    out: Metrics = {"users": float(len(truth))}
    for k in ks:
        recall = recall_sq = ndcg = hr = 0.0
        shown: set[int] = set()
        for user, items in truth.items():
            top = list(rankings.get(user, ()))[:k]
            shown.update(top)
            relevant = set(items.tolist())
            gains = [1.0 if item in relevant else 0.0 for item in top]
            hits = sum(gains)
            ideal = min(k, len(relevant))
            recall += hits / ideal
            recall_sq += (hits / ideal) ** 2
            hr += 1.0 if hits else 0.0
            dcg = sum(g / math.log2(rank + 2) for rank, g in enumerate(gains))
            idcg = sum(1.0 / math.log2(rank + 2) for rank in range(ideal))
            ndcg += dcg / idcg
        n = len(truth)
        mean = recall / n
        out[f"recall@{k}"] = mean
        if n > 1:
            variance = max(0.0, recall_sq / n - mean * mean) * n / (n - 1)
            out[f"recall@{k}_se"] = math.sqrt(variance / n)
        out[f"ndcg@{k}"] = ndcg / n
        out[f"hr@{k}"] = hr / n
        out[f"coverage@{k}"] = len(shown) / n_catalog if n_catalog else 0.0
    return out
