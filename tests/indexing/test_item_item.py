"""Item-item models against their formulas computed densely on small matrices."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from indexing.item_item import (
    ItemItemParams,
    bm25_item_rows,
    ease_weights,
    item_item,
    truncate_rows,
)
from indexing.knn import item_similarity


def _random_pattern(seed: int = 0, users: int = 60, items: int = 25) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((users, items)) < 0.2).astype(np.float32)
    dense[:, 3] = 0.0  # an item nobody touched
    return sp.csr_matrix(dense * rng.integers(1, 5, size=dense.shape))


def _assert_top_m_of(got: sp.csr_matrix, w: np.ndarray, m: int) -> None:
    """`got` holds, per row, m largest positive off-diagonal entries of `w` (at ties any
    of the tied columns; float32 rounding decides which)."""
    expected = _top_m_dense(w, m)
    dense = got.toarray()
    rows, cols = dense.nonzero()
    assert np.allclose(dense[rows, cols], w[rows, cols], rtol=1e-5)
    assert (rows != cols).all()
    for r in range(w.shape[0]):
        assert np.allclose(np.sort(dense[r])[::-1], np.sort(expected[r])[::-1], rtol=1e-5)


def _top_m_dense(w: np.ndarray, m: int) -> np.ndarray:
    out = np.zeros_like(w)
    for r in range(w.shape[0]):
        row = w[r].copy()
        row[r] = 0.0
        order = np.lexsort((np.arange(row.shape[0]), -row))[:m]
        keep = order[row[order] > 0]
        out[r, keep] = row[keep]
    return out


def test_ease_is_the_closed_form() -> None:
    x = _random_pattern()
    binary = (x.toarray() > 0).astype(np.float64)
    g = binary.T @ binary + 30.0 * np.eye(binary.shape[1])
    p = np.linalg.inv(g)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    ease = ease_weights(x, 30.0, max_items=10_000)
    touched = np.flatnonzero(binary.sum(axis=0) > 0)
    assert ease.items.tolist() == touched.tolist()
    # EASE over the touched items equals EASE over all (an untouched item's row is zero)
    sub = binary[:, touched]
    g2 = sub.T @ sub + 30.0 * np.eye(touched.shape[0])
    p2 = np.linalg.inv(g2)
    b2 = -p2 / np.diag(p2)[None, :]
    np.fill_diagonal(b2, 0.0)
    assert np.allclose(ease.weights, b2, atol=1e-5)
    assert np.allclose(b[np.ix_(touched, touched)], b2, atol=1e-5)


def test_ease_caps_its_size_to_the_most_popular_items() -> None:
    x = _random_pattern(1)
    counts = np.asarray((x > 0).sum(axis=0)).ravel()
    ease = ease_weights(x, 10.0, max_items=5)
    assert ease.items.shape == (5,)
    assert set(counts[ease.items].tolist()) <= set(np.sort(counts)[-5:].tolist())
    sparse = ease.sparse(3)
    assert sparse.shape == (25, 25)
    assert set(sparse.nonzero()[0].tolist()) <= set(ease.items.tolist())
    assert np.diff(sparse.indptr).max() <= 3


def test_rp3beta_is_the_random_walk_over_popularity() -> None:
    x = _random_pattern(2)
    binary = (x.toarray() > 0).astype(np.float64)
    per_user, per_item = binary.sum(axis=1), binary.sum(axis=0)
    p_ui = (binary / np.maximum(per_user, 1.0)[:, None]) ** 0.7
    p_iu = (binary.T / np.maximum(per_item, 1.0)[:, None]) ** 0.7
    scale = np.zeros_like(per_item)
    np.power(per_item, -0.4, out=scale, where=per_item > 0)
    w = (p_iu @ p_ui) * scale[None, :]
    _assert_top_m_of(item_item(x, ItemItemParams("rp3beta", 6, alpha=0.7, beta=0.4)), w, 6)


def test_bm25_rows_are_implicits_bm25_weight_and_knn_their_products() -> None:
    from implicit.nearest_neighbours import bm25_weight

    x = _random_pattern(3)
    binary = sp.csr_matrix((x > 0).astype(np.float32))
    rows = bm25_item_rows(binary, k1=1.2, b=0.75).toarray()
    reference = bm25_weight(sp.csr_matrix(binary.T, dtype=np.float64), K1=1.2, B=0.75)
    assert np.allclose(rows, reference.toarray(), rtol=1e-5)
    w = rows.astype(np.float64) @ rows.T
    _assert_top_m_of(item_item(x, ItemItemParams("bm25", 5, k1=1.2, b=0.75)), w, 5)


def test_cosine_kind_is_the_item_knn() -> None:
    x = _random_pattern(4)
    got = item_item(x, ItemItemParams("cosine", 7))
    assert (got != item_similarity(x, 7)).nnz == 0


@pytest.mark.parametrize("m", [1, 3, 8])
def test_a_narrower_top_m_read_from_a_wide_one_is_that_top_m(m: int) -> None:
    x = _random_pattern(5)
    wide = item_item(x, ItemItemParams("rp3beta", 20))
    narrow = item_item(x, ItemItemParams("rp3beta", m))
    assert np.allclose(truncate_rows(wide, m).toarray(), narrow.toarray())
