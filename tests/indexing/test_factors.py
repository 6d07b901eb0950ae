"""MF and item-KNN on planted blocks: an item's neighbours are the items of its block."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from indexing import AlsParams, FoldIn, Weighting, read_events, train_als
from indexing.factors import confidence
from indexing.knn import item_similarity
from indexing.matrix import interaction_matrix
from tests.indexing.conftest import ITEMS_PER_BLOCK, block_of, planted_rows

PARAMS = AlsParams(factors=8, regularization=0.1, alpha=2.0, iterations=10, seed=3)


def _matrix() -> tuple[sp.csr_matrix, tuple[str, ...]]:
    log, _ = read_events(planted_rows())
    return interaction_matrix(log, Weighting()), log.item_ids


def _block_precision(vectors: np.ndarray, item_ids: tuple[str, ...], k: int) -> float:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    hits = 0
    for row, item in enumerate(item_ids):
        top = np.argsort(-sims[row])[:k]
        hits += sum(block_of(item_ids[t]) == block_of(item) for t in top)
    return hits / (k * len(item_ids))


def test_als_neighbours_recover_the_planted_blocks() -> None:
    raw, ids = _matrix()
    factors = train_als(raw, PARAMS)
    assert factors.items.dtype == np.float32 and factors.items.flags.c_contiguous
    assert _block_precision(factors.items, ids, ITEMS_PER_BLOCK - 1) > 0.95


def test_als_is_deterministic_for_a_seed() -> None:
    raw, _ = _matrix()
    a, b = train_als(raw, PARAMS), train_als(raw, PARAMS)
    assert np.array_equal(a.items, b.items) and np.array_equal(a.users, b.users)


def test_fold_in_equals_the_als_user_step() -> None:
    raw, _ = _matrix()
    factors = train_als(raw, PARAMS)
    user = 5
    row = raw.getrow(user)
    fold = FoldIn(factors.items, PARAMS.regularization, PARAMS.alpha)
    u = fold(row.indices.astype(np.intp), row.data)
    # the same normal equations solved densely
    c = confidence(raw, PARAMS.alpha).getrow(user)
    y = factors.items.astype(np.float64)
    cu = np.ones(y.shape[0])
    cu[c.indices] = c.data
    p = np.zeros(y.shape[0])
    p[c.indices] = 1.0
    a = y.T @ (cu[:, None] * y) + PARAMS.regularization * np.eye(y.shape[1])
    expected = np.linalg.solve(a, y.T @ (cu * p))
    assert np.allclose(u, expected, rtol=1e-4, atol=1e-5)
    # and points at the user's block
    scores = factors.items @ u
    assert np.all(np.isin(np.argsort(-scores)[:6] // ITEMS_PER_BLOCK, [block_of("b0-0")]))


def test_fold_in_with_nothing_known_gives_zeros() -> None:
    fold = FoldIn(np.eye(4, dtype=np.float32), 0.1, 1.0)
    assert not fold(np.array([], dtype=np.intp), np.array([])).any()
    assert not fold(np.array([1]), np.array([0.0])).any()


def _direct_fold_in(
    y: np.ndarray, reg: float, alpha: float, rows: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """The ALS user step solved as written, d x d, for the kept (weight > 0) entries."""
    keep = weights > 0
    ys, c = y[rows[keep]].astype(np.float64), 1.0 + alpha * np.log1p(weights[keep])
    if not keep.any():
        return np.zeros(y.shape[1])
    a = y.astype(np.float64).T @ y + reg * np.eye(y.shape[1]) + (ys.T * (c - 1.0)) @ ys
    return np.linalg.solve(a, ys.T @ c)


@pytest.mark.parametrize("alpha", [2.0, 0.0])
def test_fold_in_short_and_long_histories_solve_the_same_system(alpha: float) -> None:
    # d = 16: histories of up to 8 items take the Woodbury path, longer ones the d x d
    # solve; weights from 1e-9 to 1e6, zero and negative ones in the middle of a row.
    rng = np.random.default_rng(7)
    y = rng.normal(size=(200, 16)).astype(np.float32)
    fold = FoldIn(y, 0.5, alpha)
    widths = [1, 2, 5, 8, 9, 16, 30]
    rows = np.zeros((len(widths), 30), dtype=np.intp)
    weights = np.zeros((len(widths), 30))
    for r, width in enumerate(widths):
        rows[r, :width] = rng.choice(200, size=width, replace=False)
        weights[r, :width] = 10.0 ** rng.uniform(-9, 6, size=width)
    weights[2, 1], weights[5, 3] = 0.0, -1.0
    bulk = fold.batch(rows, weights)
    for r in range(len(widths)):
        expected = _direct_fold_in(y, 0.5, alpha, rows[r], weights[r])
        assert np.allclose(bulk[r], expected, rtol=1e-9, atol=1e-12), widths[r]
        one = fold(rows[r, : widths[r]], weights[r, : widths[r]])
        assert np.allclose(one, expected, rtol=1e-5, atol=1e-6), widths[r]


def test_fold_in_without_regularization_over_a_rank_deficient_gram_still_loads() -> None:
    y = np.zeros((6, 4), dtype=np.float32)
    y[:, :2] = np.random.default_rng(0).normal(size=(6, 2))  # two dimensions never used
    fold = FoldIn(y, 0.0, 1.0)  # S is singular: no inverse, every history solved directly
    with pytest.raises(np.linalg.LinAlgError):
        fold(np.array([0, 1]), np.array([1.0, 2.0]))


def test_item_knn_neighbours_are_in_block_and_truncated() -> None:
    raw, ids = _matrix()
    sim = item_similarity(raw, top_m=5)
    assert sim.shape == (len(ids), len(ids))
    assert np.diff(sim.indptr).max() <= 5
    assert sim.diagonal().sum() == 0
    rows, cols = sim.nonzero()
    assert all(block_of(ids[r]) == block_of(ids[c]) for r, c in zip(rows, cols, strict=True))


def test_item_knn_equals_dense_cosine_top_m() -> None:
    rng = np.random.default_rng(4)
    x = sp.csr_matrix((rng.random((60, 25)) < 0.2).astype(np.float32))
    b = x.toarray()
    counts = b.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        dense = (b.T @ b) / np.sqrt(np.outer(counts, counts))
    dense = np.nan_to_num(dense)
    np.fill_diagonal(dense, 0.0)
    sim = item_similarity(x, top_m=4)
    for i in range(25):
        row = sim.getrow(i)
        expected = sorted(((-v, j) for j, v in enumerate(dense[i]) if v > 0))[:4]
        got = sorted(zip((-row.data).tolist(), row.indices.tolist(), strict=True))
        assert [j for _, j in got] == [j for _, j in expected]
        assert np.allclose([v for v, _ in got], [v for v, _ in expected], atol=1e-6)


def test_knn_scores_at_candidates_equal_the_dense_sum() -> None:
    from indexing.knn import knn_scores, knn_scores_at

    raw, _ = _matrix()
    sim = item_similarity(raw, top_m=5)
    rows = np.array([0, 3, 7], dtype=np.intp)
    weights = np.array([1.0, 2.5, 0.5])
    cand = np.array([1, 2, 5, 9, 40, 47], dtype=np.intp)
    dense = knn_scores(sim, rows, weights)[cand]
    assert np.allclose(knn_scores_at(sim, rows, weights, cand), dense, rtol=1e-6)
    assert not knn_scores_at(sim, rows[:0], weights[:0], cand).any()


def test_dense_knn_scores_in_float64_sum_exactly_as_at_candidates() -> None:
    from indexing.knn import knn_scores, knn_scores_at

    raw, _ = _matrix()
    sim = item_similarity(raw, top_m=5)
    rows = np.array([0, 3, 7, 11], dtype=np.intp)
    weights = np.array([1.0, 2.5, 0.5, 0.3])
    every = np.arange(sim.shape[1], dtype=np.intp)
    dense = knn_scores(sim, rows, weights, np.float64)
    assert np.array_equal(dense, knn_scores_at(sim, rows, weights, every))


@pytest.mark.parametrize("history", [3, 400])  # few entries: unique's path; many: bincount's
def test_knn_scores_at_sums_exactly_for_short_and_long_histories(history: int) -> None:
    from indexing.knn import knn_scores, knn_scores_at

    rng = np.random.default_rng(5)
    n, m = 5_000, 5
    sim = sp.csr_matrix(
        (
            rng.random(n * m).astype(np.float32),
            rng.integers(0, n, size=n * m),
            np.arange(0, n * m + 1, m),
        ),
        shape=(n, n),
    )
    sim.sum_duplicates()  # a model's row lists each neighbour once
    rows = rng.choice(n, size=history, replace=False).astype(np.intp)
    weights = rng.uniform(0.1, 5.0, size=history)
    cand = np.unique(rng.integers(0, n, size=700)).astype(np.intp)
    dense = knn_scores(sim, rows, weights, np.float64)
    assert np.array_equal(knn_scores_at(sim, rows, weights, cand), dense[cand])
