"""Validation recall@10 of many blend settings of one trained model, in one pass.

Tuning asks the same question thousands of times: with these item factors, item-item
weights and shopper histories, what recall would `Blend.score` reach under each blend
weighting, popularity window and popularity scale? Scoring every shopper through
`Blend.score` per setting (as the final evaluation does, `experiment.served_rankings`)
costs a full catalogue score and a Python top-k per shopper per setting. Here each block
of shoppers is scored once:

1. the three normalised signals of `Blend.score` for every item — mf / max|mf| (fold-in in
   bulk, `FoldIn.batch`), knn / max knn, and each window's popularity on each scale;
2. a pool per shopper: the `pool` best items of each signal, the shopper's own train
   items left out. A setting can rank an item outside every signal's top `pool` in its
   top 10 (one that is good at everything and best at nothing), so this is an
   approximation: on Online Retail's validation split, pool 50 against every item moved
   1 of 171 settings, by 0.00009 recall@10, and not the best one;
3. per setting, a weighted sum over the pool and the top 10 with ties to the lower item
   row (what `top_k` does), counted against the truth.

The final, reported figure never comes from here: `evaluate_models` scores the chosen
setting through `Blend.score`. `tests/indexing/test_tuning.py` checks the two agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from indexing.baselines import Ranker
from indexing.blend import Blend, BlendWeights, PopularityScale, popularity_term
from indexing.evaluate import DiscoveryTask
from indexing.model import TrainedModel

__all__ = ["BlendCase", "blend_recalls", "ranker_recall"]

_K = 10


@dataclass(frozen=True)
class BlendCase:
    """One setting scored by `blend_recalls`: a popularity window (a key of its `pops`),
    the blend weights and the popularity scale."""

    window: float
    weights: BlendWeights
    scale: PopularityScale


def blend_recalls(
    task: DiscoveryTask,
    model: TrainedModel,
    histories: Mapping[int, tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]],
    pops: Mapping[float, npt.NDArray[np.float32]],
    weights: Sequence[BlendWeights],
    users: npt.NDArray[np.int64],
    *,
    scales: Sequence[PopularityScale],
    pool: int = 50,
) -> dict[BlendCase, float]:
    """Mean recall@10 over `users` (test user codes of `task`) per (window, weights, scale).

    model: trained on `task.train` (its rows are warm item codes of the task's id table,
    `model.item_ids`); histories: per user code, item codes and raw weights as
    `history.model_histories` gives them; pops: per window, raw recent popularity over the
    model's rows (`model.recent_popularity` is ignored).
    """
    row_code, row_of = model.rows_of(task.train.item_ids)
    n = row_code.shape[0]
    blend = model.blend()
    pop_norm = {(w, s): popularity_term(p, s) for w, p in pops.items() for s in scales}
    cases = [BlendCase(w, bw, s) for w in pops for s in scales for bw in weights]
    totals = dict.fromkeys(cases, 0.0)
    # a block of shoppers: dense (size, n) signals, and FoldIn.batch's (size, L, d) and
    # (size, d, d) float64 stacks, each under ~32 MB
    d, length = model.factors.shape[1], model.params.history_items
    size = max(1, min((1 << 22) // max(n, 1), (1 << 22) // (d * d + length * d)))
    for start in range(0, users.shape[0], size):
        chunk = users[start : start + size]
        hist_rows, hist_w = _padded_histories(chunk, histories, row_of, model.params.history_items)
        signals = _signals(blend, model.similarity, hist_rows, hist_w)
        banned = _banned(chunk, task, row_of, n)
        truth = _truth(chunk, task, row_of, n)
        cand = _pool(signals, pops, banned, pool)
        valid = np.ones(cand.shape, dtype=bool)
        valid[:, 1:] = cand[:, 1:] != cand[:, :-1]  # rows sorted: drop repeats
        valid &= ~np.take_along_axis(banned, cand, axis=1)
        hits = np.take_along_axis(truth, cand, axis=1) & valid
        mf = np.take_along_axis(signals[0], cand, axis=1)
        knn = np.take_along_axis(signals[1], cand, axis=1)
        # every truth item counts, also those the model cannot rank (evaluate_rankings)
        ideal = np.array([min(_K, len(task.truth.get(u, ()))) or np.inf for u in chunk.tolist()])
        for case in cases:
            bw = case.weights
            total = (bw.pop * pop_norm[(case.window, case.scale)][cand]).astype(np.float64)
            if bw.mf:
                total += bw.mf * mf
            if bw.knn:
                total += bw.knn * knn
            # Blend.score's float32 result decides ties, as in the served ranking
            score = np.where(valid, total.astype(np.float32), np.float32(-np.inf))
            totals[case] += float((_top_hits(score, hits) / ideal).sum())
    return {case: total / users.shape[0] for case, total in totals.items()}


def ranker_recall(task: DiscoveryTask, ranker: Ranker) -> float:
    """Mean recall@10 of `ranker` over the test users of `task`: the figure of
    `evaluate_rankings(rank_all(ranker, task, 10), ...)`, counted in blocks of users
    without ranking lists (tuning scores dozens of baseline settings this way)."""
    n = len(task.train.item_ids)
    codes = np.arange(n, dtype=np.intp)
    users = task.users
    total = 0.0
    size = max(1, (1 << 22) // max(n, 1))
    for start in range(0, users.shape[0], size):
        chunk = users[start : start + size]
        score = np.asarray(ranker.scores(chunk), dtype=np.float32).copy()
        score[_banned(chunk, task, codes, n) | ~task.warm[None, :]] = -np.inf
        hits = _top_hits(score, _truth(chunk, task, codes, n))
        ideal = np.array([min(_K, len(task.truth[u])) for u in chunk.tolist()])
        total += float((hits / ideal).sum())
    return total / int(users.shape[0])


def _padded_histories(
    chunk: npt.NDArray[np.int64],
    histories: Mapping[int, tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]],
    row_of: npt.NDArray[np.intp],
    max_items: int,
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """(n, L) model rows and weights of each user's history, padded with weight 0 (items
    the model does not hold are dropped, as `served_rankings` drops them)."""
    rows = np.zeros((chunk.shape[0], max_items), dtype=np.intp)
    weights = np.zeros((chunk.shape[0], max_items), dtype=np.float64)
    for r, user in enumerate(chunk.tolist()):
        codes, w = histories.get(user, (np.empty(0, np.intp), np.empty(0, np.float32)))
        mapped = row_of[codes[:max_items]]
        ok = mapped >= 0
        k = int(ok.sum())
        rows[r, :k] = mapped[ok]
        weights[r, :k] = w[:max_items][ok]
    return rows, weights


def _signals(
    blend: Blend,
    similarity: sp.csr_matrix,
    rows: npt.NDArray[np.intp],
    weights: npt.NDArray[np.float64],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(mf, knn): float64 (n_users, n_items) each normalised by its row's max, as
    `Blend.score` normalises over every item."""
    n_users, n_items = rows.shape[0], similarity.shape[0]
    u = blend.fold_in.batch(rows, weights)
    mf = u @ np.asarray(blend.item_factors, dtype=np.float64).T
    top = np.abs(mf).max(axis=1, keepdims=True)
    np.divide(mf, top, out=mf, where=top > 0)
    on = weights > 0
    hist = sp.csr_matrix(
        (weights[on], (np.nonzero(on)[0], rows[on])), shape=(n_users, n_items), dtype=np.float64
    )
    knn = np.asarray((hist @ sp.csr_matrix(similarity, dtype=np.float64)).toarray())
    top = knn.max(axis=1, keepdims=True)
    np.divide(knn, top, out=knn, where=top > 0)
    # an empty history scores by popularity only (Blend.score returns before mf and knn)
    empty = ~on.any(axis=1)
    mf[empty] = 0.0
    knn[empty] = 0.0
    return mf, knn


def _banned(
    chunk: npt.NDArray[np.int64], task: DiscoveryTask, row_of: npt.NDArray[np.intp], n: int
) -> npt.NDArray[np.bool_]:
    """Bool (n_users, n_items): each user's train items (never recommended)."""
    out = np.zeros((chunk.shape[0], n), dtype=bool)
    for r, user in enumerate(chunk.tolist()):
        rows = row_of[np.fromiter(task.train_items.get(user, ()), dtype=np.intp)]
        out[r, rows[rows >= 0]] = True
    return out


def _truth(
    chunk: npt.NDArray[np.int64], task: DiscoveryTask, row_of: npt.NDArray[np.intp], n: int
) -> npt.NDArray[np.bool_]:
    out = np.zeros((chunk.shape[0], n), dtype=bool)
    for r, user in enumerate(chunk.tolist()):
        rows = row_of[task.truth.get(user, np.empty(0, np.int64))]
        out[r, rows[rows >= 0]] = True
    return out


def _pool(
    signals: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]],
    pops: Mapping[float, npt.NDArray[np.float32]],
    banned: npt.NDArray[np.bool_],
    pool: int,
) -> npt.NDArray[np.intp]:
    """Int (n_users, m): each user's candidate rows, sorted (repeats possible). pops: raw
    recent buyers per window (each popularity scale orders the items as they do)."""
    n = banned.shape[1]
    k = min(pool, n)
    parts: list[npt.NDArray[np.intp]] = []
    for signal in signals:
        masked = np.where(banned, np.float32(np.inf), -signal.astype(np.float32))
        parts.append(np.argpartition(masked, k - 1, axis=1)[:, :k])
    # popularity is the same for everyone: each user's top k outside their own items lie
    # in the global top k + (most own items in the chunk), usually far fewer than n
    head_size = min(n, k + int(banned.sum(axis=1).max(initial=0)))
    for pop in pops.values():
        head = np.argsort(-pop, kind="stable")[:head_size].astype(np.intp)
        # a stable sort of "is own item" puts each user's other items first, in head order
        first = np.argsort(banned[:, head], axis=1, kind="stable")[:, :k]
        parts.append(head[first])
    return np.sort(np.concatenate(parts, axis=1), axis=1)


def _top_hits(score: npt.NDArray[np.float32], hits: npt.NDArray[np.bool_]) -> npt.NDArray[np.intp]:
    """Hits among each row's 10 best scores, ties to the lower column (rows hold
    candidates in ascending item order, so the lower column is the lower item)."""
    m = score.shape[1]
    k = min(_K, m)
    thr = -np.partition(-score, k - 1, axis=1)[:, k - 1 : k]
    above = score > thr
    tied = score == thr
    need = k - above.sum(axis=1, keepdims=True)
    picked = above | (tied & (np.cumsum(tied, axis=1) <= need))
    picked &= np.isfinite(score)
    out: npt.NDArray[np.intp] = (picked & hits).sum(axis=1)
    return out
