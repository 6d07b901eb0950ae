"""The served scoring: a blend of MF fold-in, item-KNN and recent popularity.

For a shopper given by recent items (rows) with raw weights (type weight x time decay, as
in `indexing.matrix`), each candidate item c gets::

    score(c) = w_mf * mf(c) / max|mf| + w_knn * knn(c) / max knn + w_pop * pop(c)

with mf(c) = u · y_c (u the fold-in vector, y_c the raw ALS item factors),
knn(c) = Σ_j w_j sim(j, c) and pop(c) the recent buyers of c on the model's popularity
scale (`popularity_term`): log1p(buyers) / log1p(max), or buyers / max. The maxima are
over the candidates, so the three terms are on comparable [-1, 1] scales for every
shopper. The weights and the scale were chosen on validation splits (docs/indexing.md).

`Blend` is pure numpy over arrays the artifact carries; the worker calls `Blend.score`
(or `LoadedIndex.recommend`) per event. The offline evaluation calls the very same method.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from indexing.events import EventLog
from indexing.factors import FoldIn
from indexing.knn import knn_scores, knn_scores_at, knn_scores_many
from indexing.matrix import SECONDS_PER_DAY, Weighting, event_weights

__all__ = [
    "POPULARITY_SCALES",
    "Blend",
    "BlendWeights",
    "PopularityScale",
    "popularity_term",
    "recent_item_weights",
    "shopper_histories",
]

PopularityScale = Literal["log", "linear"]
#: how recent buyers become the popularity term: "log" flattens the head (a best seller
#: counts little more than a steady item), "linear" keeps it (grocery staples, where the
#: head is what a new shopper buys next); the tuning tries both
POPULARITY_SCALES: tuple[PopularityScale, ...] = ("log", "linear")


def popularity_term(
    counts: npt.NDArray[np.floating], scale: PopularityScale
) -> npt.NDArray[np.float32]:
    """Float32 (n,): recent buyers per item on `scale`, divided by the maximum (0 to 1)."""
    if not counts.size:
        return counts.astype(np.float32)
    term = counts.astype(np.float64)
    if scale == "log":
        # the maximum in the counts' own precision, as every version before the scale
        top = float(np.log1p(counts.max()))
        term = np.log1p(term)
    else:
        top = float(term.max())
    return (term / top if top > 0 else term).astype(np.float32)


@dataclass(frozen=True)
class BlendWeights:
    """Weights of the three normalised signals; (1, 0, 0) is MF alone."""

    mf: float = 1.0
    knn: float = 0.3
    pop: float = 1.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class Blend:
    """Scores candidate items for one shopper from their recent items.

    item_factors: float32 (n_items, d) raw ALS factors; fold_in: a `FoldIn` over them;
    similarity: CSR float32 (n_items, n_items) top-M item-KNN; recent_popularity: float32
    (n_items,) distinct recent buyers; popularity_scale: see `popularity_term`.
    """

    def __init__(
        self,
        item_factors: npt.NDArray[np.float32],
        fold_in: FoldIn,
        similarity: sp.csr_matrix,
        recent_popularity: npt.NDArray[np.float32],
        weights: BlendWeights,
        popularity_scale: PopularityScale,
    ):
        self.item_factors = item_factors
        self.fold_in = fold_in
        self.similarity = similarity
        self.popularity = popularity_term(recent_popularity, popularity_scale)
        self.weights = weights

    def score(
        self,
        rows: npt.NDArray[np.intp],
        weights: npt.NDArray[np.floating],
        candidates: npt.NDArray[np.intp] | None,
        blend: BlendWeights | None = None,
    ) -> npt.NDArray[np.float32]:
        """Float32 (len(candidates),): blended scores of `candidates` (item rows; None:
        every item, in row order, scored without gathering rows).

        rows / weights: the shopper's recent item rows (int (n,)) and raw weights (n,).
        An empty history scores by popularity only.
        """
        bw = blend or self.weights
        cand = np.asarray(candidates, dtype=np.intp) if candidates is not None else None
        size = self.popularity.shape[0] if cand is None else cand.shape[0]
        total = np.zeros(size, dtype=np.float64)
        if bw.pop:
            total += bw.pop * (self.popularity if cand is None else self.popularity[cand])
        if rows.shape[0] == 0:
            return total.astype(np.float32)
        if bw.mf:
            u = self.fold_in(rows, weights)
            mf = (self.item_factors if cand is None else self.item_factors[cand]) @ u
            top = float(np.abs(mf).max()) if mf.size else 0.0
            if top > 0:
                total += bw.mf * (mf / top)
        if bw.knn:
            if cand is None:
                knn = knn_scores(self.similarity, rows, weights, np.float64)
            else:
                knn = knn_scores_at(self.similarity, rows, weights, cand)
            top = float(knn.max()) if knn.size else 0.0
            if top > 0:
                total += bw.knn * (knn / top)
        return total.astype(np.float32)

    def score_many(
        self,
        histories: Sequence[tuple[npt.NDArray[np.intp], npt.NDArray[np.floating]]],
        blend: BlendWeights | None = None,
    ) -> npt.NDArray[np.float32]:
        """Float32 (len(histories), n_items): `score(rows, weights, None)` of every item
        for each shopper (rows, weights), computed as matrix products for the batch; each
        row as `score` gives it, up to the rounding of the batched products."""
        bw = blend or self.weights
        n_items = self.popularity.shape[0]
        total = np.zeros((len(histories), n_items), dtype=np.float64)
        if bw.pop:
            total += bw.pop * self.popularity
        live = [n for n, (rows, _) in enumerate(histories) if rows.shape[0]]
        if live:
            width = max(histories[n][0].shape[0] for n in live)
            rows = np.zeros((len(live), width), dtype=np.intp)
            weights = np.zeros((len(live), width), dtype=np.float64)
            for r, n in enumerate(live):
                h_rows, h_weights = histories[n]
                rows[r, : h_rows.shape[0]] = h_rows
                weights[r, : h_rows.shape[0]] = h_weights
            # the terms are added in `score`'s order, so each row rounds as it does
            if bw.mf:
                u = self.fold_in.batch(rows, weights).astype(np.float32)
                mf = u @ self.item_factors.T
                _add_normalised(total, live, mf, np.abs(mf).max(axis=1, keepdims=True), bw.mf)
            if bw.knn:
                knn = knn_scores_many(self.similarity, rows, weights)
                _add_normalised(total, live, knn, knn.max(axis=1, keepdims=True), bw.knn)
        return total.astype(np.float32)


def _add_normalised(
    total: npt.NDArray[np.float64],
    live: list[int],
    term: npt.NDArray[np.floating],
    top: npt.NDArray[np.floating],
    weight: float,
) -> None:
    """``total[live] += weight * term / top`` for the rows whose top is above 0 (as
    `score` adds a term only then), scaling `term` in place and adding without gathering
    `total`'s rows when `live` is all of them."""
    scaled = top > 0
    np.divide(term, top, out=term, where=scaled)
    term[~scaled[:, 0]] = 0
    term *= weight
    if len(live) == total.shape[0]:
        total += term
    else:
        total[live] += term


def shopper_histories(
    log: EventLog,
    weighting: Weighting,
    as_of: float,
    max_items: int = 50,
    max_events: int | None = None,
) -> Mapping[int, tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]]:
    """Per user code: their `max_items` most recently touched item rows and summed weights,
    over their last `max_events` events (None: all).

    The same view of a shopper the worker has live (`recent_item_weights` over the recent
    events it keeps), rebuilt from a log for offline evaluation. Rows are ordered most
    recent first.
    """
    if max_events is not None:
        log = log.select(_last_events(log, max_events))
    w = event_weights(log, weighting, as_of).astype(np.float64)
    n_items = len(log.item_ids)
    key = log.users.astype(np.int64) * n_items + log.items
    uniq, inv = np.unique(key, return_inverse=True)
    wsum = np.bincount(inv, weights=w, minlength=uniq.shape[0])
    last = np.full(uniq.shape[0], -np.inf)
    np.maximum.at(last, inv, log.ts)
    users = uniq // n_items
    items = uniq % n_items
    order = np.lexsort((items, -last, users))
    out: dict[int, tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]] = {}
    bounds = np.flatnonzero(np.diff(users[order])) + 1
    for chunk in np.split(order, bounds):
        if chunk.size == 0:
            continue
        chunk = chunk[:max_items]
        out[int(users[chunk[0]])] = (
            items[chunk].astype(np.intp),
            wsum[chunk].astype(np.float32),
        )
    return out


def _last_events(log: EventLog, count: int) -> npt.NDArray[np.bool_]:
    """Bool (n,): each user's `count` latest events (later position first at equal ts)."""
    order = np.lexsort((-np.arange(len(log)), -log.ts, log.users))
    users = log.users[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    rank = np.arange(order.shape[0]) - np.repeat(starts, np.diff(np.r_[starts, order.shape[0]]))
    keep = np.zeros(len(log), dtype=bool)
    keep[order[rank < count]] = True
    return keep


def recent_item_weights(
    events: Iterable[tuple[str, str, float]],
    now: float,
    weighting: Weighting,
    max_items: int = 50,
) -> tuple[list[str], list[float]]:
    """The live-path twin of `shopper_histories` for one shopper.

    events: (item_id, type, ts epoch seconds) of the shopper, any order. Returns the
    `max_items` most recently touched item ids (most recent first) and, for each, the sum
    of ``type_weight * 0.5 ** (age_days / half_life_days)`` seen from `now` — the
    `weights` that `LoadedIndex.recommend` / `fold_in` / `score` expect. Items whose
    weight sums to <= 0 are left out.
    """
    total: dict[str, float] = {}
    last: dict[str, float] = {}
    hl = weighting.half_life_days
    for item_id, type_name, ts in events:
        w = float(weighting.type_weights.get(type_name, 0.0))
        if hl:
            w *= 2.0 ** (-max(now - ts, 0.0) / SECONDS_PER_DAY / hl)
        total[item_id] = total.get(item_id, 0.0) + w
        last[item_id] = max(last.get(item_id, -np.inf), ts)
    order = sorted(total, key=lambda i: (-last[i], i))
    kept = [i for i in order if total[i] > 0][:max_items]
    return kept, [total[i] for i in kept]
