"""Baseline rankers the served model must beat: popularity (all time and a recent window),
item-item models (cosine and BM25 KNN, RP3beta, EASE) and plain ALS with its trained user
factors.

A ranker answers `scores(users) -> float32 (len(users), n_items)`; higher is better.
`top_k` turns scores into rankings that exclude each user's train items and cold items.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from indexing.factors import Factors
from indexing.item_item import EaseWeights
from indexing.knn import binary_pattern
from indexing.ranking import top_indices

__all__ = [
    "AlsRanker",
    "EaseRanker",
    "ItemItemRanker",
    "PopularityRanker",
    "Ranker",
    "popularity",
    "top_k",
]


class Ranker(Protocol):
    def scores(self, users: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]: ...


def popularity(
    users: npt.NDArray[np.int32],
    items: npt.NDArray[np.int32],
    ts: npt.NDArray[np.float64],
    n_items: int,
    *,
    since: float | None = None,
) -> npt.NDArray[np.float32]:
    """Float32 (n_items,): distinct users per item among events with ts >= `since`."""
    keep = np.ones(ts.shape[0], dtype=bool) if since is None else ts >= since
    pairs = np.unique(users[keep].astype(np.int64) * n_items + items[keep])
    return np.bincount(pairs % n_items, minlength=n_items).astype(np.float32)


class PopularityRanker:
    """Everyone gets the same list: items by distinct buyers/viewers (ties by lower id)."""

    def __init__(self, counts: npt.NDArray[np.float32]):
        # a tiny id-decreasing tie-breaker keeps the order deterministic
        n = counts.shape[0]
        self._row = (counts.astype(np.float64) - np.arange(n) / (n + 1.0)).astype(np.float32)

    def scores(self, users: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        return np.broadcast_to(self._row, (users.shape[0], self._row.shape[0])).copy()


class ItemItemRanker:
    """Sum of a top-M item-item model's weights from the user's train items (see
    `indexing.item_item`)."""

    def __init__(self, user_items: sp.csr_matrix, similarity: sp.csr_matrix):
        self._x = binary_pattern(user_items)
        self.similarity = similarity

    def scores(self, users: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        out = (self._x[users] @ self.similarity).toarray()
        return np.asarray(out, dtype=np.float32)


class EaseRanker:
    """EASE with its dense weights: x_u[items] @ B over the capped item set, 0 elsewhere."""

    def __init__(self, user_items: sp.csr_matrix, ease: EaseWeights):
        self._x = sp.csr_matrix(binary_pattern(user_items)[:, ease.items])
        self._ease = ease

    def scores(self, users: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        out = np.zeros((users.shape[0], self._ease.n_items), dtype=np.float32)
        out[:, self._ease.items] = self._x[users] @ self._ease.weights
        return out


class AlsRanker:
    """Dot product of the trained user factors with the item factors."""

    def __init__(self, factors: Factors):
        self._f = factors

    def scores(self, users: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        return np.asarray(self._f.users[users] @ self._f.items.T, dtype=np.float32)


def top_k(
    scores: npt.NDArray[np.float32],
    users: npt.NDArray[np.int64],
    exclude: Mapping[int, frozenset[int]],
    allowed: npt.NDArray[np.bool_],
    k: int,
) -> dict[int, list[int]]:
    """Per user, the `k` best item codes by score (ties: lower code first), skipping the
    user's `exclude` items and items where `allowed` (bool (n_items,)) is false."""
    out: dict[int, list[int]] = {}
    for row, user in enumerate(users.tolist()):
        s = scores[row].astype(np.float64, copy=True)
        s[~allowed] = -np.inf
        seen = exclude.get(user)
        if seen:
            s[list(seen)] = -np.inf
        out[user] = top_indices(s, min(k, int(np.isfinite(s).sum()))).tolist()
    return out
