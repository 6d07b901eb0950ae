"""Item-KNN: cosine similarity on co-occurrence, truncated to each item's top M neighbours.

``sim(i, j) = |U_i ∩ U_j| / sqrt(|U_i| |U_j|)`` over the sets of users who touched each
item; the diagonal is zero. The result is a CSR float32 (n_items, n_items) matrix with at
most M stored entries per row, so it scales to large catalogs and fits in the artifact.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

__all__ = [
    "binary_pattern",
    "item_similarity",
    "knn_scores",
    "knn_scores_at",
    "top_m_products",
]

_BLOCK = 4096


#: A pass over the whole catalogue (a mask, a bincount) beats np.unique's sort once the
#: entries number at least 1/CATALOGUE_PASS_SHARE of the catalogue (a long history's
#: neighbour lists); below, the sort of the few entries is cheaper.
CATALOGUE_PASS_SHARE = 32


def item_similarity(user_items: sp.csr_matrix, top_m: int = 100) -> sp.csr_matrix:
    """CSR float32 (n_items, n_items): cosine co-occurrence, top `top_m` per row (ties: lower
    column first), zero diagonal.

    user_items: any users x items matrix; only its pattern (nonzero cells) is used. Works in
    sparse blocks of rows, so memory follows the co-occurrence count, not n_items².
    """
    x = binary_pattern(user_items)
    counts = np.asarray(x.sum(axis=0)).ravel().astype(np.float32)
    inv = np.zeros_like(counts)
    np.divide(1.0, np.sqrt(counts), out=inv, where=counts > 0)
    return top_m_products(sp.csr_matrix(x.T), x, top_m, row_scale=inv, col_scale=inv)


def binary_pattern(user_items: sp.spmatrix) -> sp.csr_matrix:
    """CSR float32 copy of `user_items` with 1 in every nonzero cell (who touched what)."""
    x = sp.csr_matrix(user_items, dtype=np.float32, copy=True)
    x.eliminate_zeros()
    x.data[:] = 1.0
    return x


def top_m_products(
    left: sp.csr_matrix,
    right: sp.csr_matrix,
    top_m: int,
    *,
    row_scale: npt.NDArray[np.float32] | None = None,
    col_scale: npt.NDArray[np.float32] | None = None,
) -> sp.csr_matrix:
    """CSR float32 (n, n): the `top_m` largest positive entries per row of
    ``diag(row_scale) @ left @ right @ diag(col_scale)`` (left (n, k), right (k, n)), ties
    to the lower column, diagonal zero. Computed in blocks of rows of `left`."""
    n = left.shape[0]
    indptr = [0]
    cols: list[npt.NDArray[np.int32]] = []
    vals: list[npt.NDArray[np.float32]] = []
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        co = sp.csr_matrix(left[start:stop] @ right)
        co.sort_indices()
        for r in range(stop - start):
            lo, hi = co.indptr[r], co.indptr[r + 1]
            c = co.indices[lo:hi]
            v = co.data[lo:hi]
            if row_scale is not None:
                v = v * row_scale[start + r]
            if col_scale is not None:
                v = v * col_scale[c]
            keep = (c != start + r) & (v > 0)
            c, v = c[keep], v[keep]
            # full sort, not argpartition: ties at the cut must go to the lower column
            order = np.lexsort((c, -v))[:top_m]
            cols.append(c[order].astype(np.int32))
            vals.append(v[order].astype(np.float32))
            indptr.append(indptr[-1] + order.shape[0])
    if cols:
        return sp.csr_matrix(
            (np.concatenate(vals), np.concatenate(cols), np.asarray(indptr, dtype=np.int64)),
            shape=(n, right.shape[1]),
        )
    return sp.csr_matrix((n, right.shape[1]), dtype=np.float32)


def knn_scores(
    sim: sp.csr_matrix,
    rows: npt.NDArray[np.intp],
    weights: npt.NDArray[np.floating],
    dtype: type[np.floating] = np.float32,
) -> npt.NDArray[Any]:
    """(n_items,) of `dtype`: ``Σ_j weights[j] * sim[rows[j], :]`` (one shopper's KNN
    scores), summed in float64 in the order of `rows`, as `knn_scores_at` sums."""
    col, vals = _neighbour_lists(sim, rows, weights)
    return np.bincount(col, weights=vals, minlength=sim.shape[1]).astype(dtype, copy=False)


def _neighbour_lists(
    sim: sp.csr_matrix, rows: npt.NDArray[np.intp], weights: npt.NDArray[np.floating]
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float64]]:
    """The columns of `sim`'s rows `rows`, one after another, and each entry times its
    row's weight in float64: a bincount over them adds in the order of `rows`."""
    indptr, indices, data = sim.indptr, sim.indices, sim.data
    cols: list[npt.NDArray[np.int32]] = [indices[:0]]
    vals: list[npt.NDArray[np.float64]] = [np.empty(0)]
    for r, w in zip(np.asarray(rows).tolist(), np.asarray(weights).tolist(), strict=True):
        lo, hi = indptr[r], indptr[r + 1]
        cols.append(indices[lo:hi])
        vals.append(w * data[lo:hi].astype(np.float64))
    return np.concatenate(cols), np.concatenate(vals)


def knn_scores_many(
    sim: sp.csr_matrix, rows: npt.NDArray[np.intp], weights: npt.NDArray[np.floating]
) -> npt.NDArray[np.float64]:
    """Float64 (n, n_items): `knn_scores(sim, rows[i], weights[i], np.float64)` for each
    row i of `rows` / `weights` (both (n, L), padded with weight 0), summed in one step.

    Gathers only the histories' rows of `sim`: for a firing batch (100 shoppers, a few
    items each) 4-13x cheaper than the tuning's product with all of `sim` in float64
    (`blend_search._signals`), which stays ahead for thousands of shoppers at once."""
    w = np.asarray(weights, dtype=np.float64)
    on = w != 0
    neighbours = sim[np.asarray(rows)[on]]  # one CSR row per history entry
    per_entry = np.diff(neighbours.indptr)
    owner = np.repeat(np.nonzero(on)[0], per_entry)
    values = np.repeat(w[on], per_entry) * neighbours.data.astype(np.float64)
    shape = (rows.shape[0], sim.shape[1])
    return np.asarray(sp.coo_matrix((values, (owner, neighbours.indices)), shape=shape).toarray())


def knn_scores_at(
    sim: sp.csr_matrix,
    rows: npt.NDArray[np.intp],
    weights: npt.NDArray[np.floating],
    candidates: npt.NDArray[np.intp],
) -> npt.NDArray[np.float64]:
    """`knn_scores(sim, rows, weights)[candidates]` without an (n_items,) temporary.

    Cost follows the neighbour lists of `rows` (at most M each), not the catalog size.
    """
    col, vals = _neighbour_lists(sim, rows, weights)
    out = np.zeros(np.asarray(candidates).shape[0], dtype=np.float64)
    if col.shape[0] == 0:
        return out
    if col.shape[0] * CATALOGUE_PASS_SHARE >= sim.shape[1]:
        # a long history (200 items x M neighbours): summing over the catalogue beats
        # unique's sort; bincount adds in the same order, so the sums are the same
        out[:] = np.bincount(col, weights=vals, minlength=sim.shape[1])[candidates]
        return out
    uniq, inv = np.unique(col, return_inverse=True)
    sums = np.bincount(inv, weights=vals, minlength=uniq.shape[0])
    pos = np.minimum(np.searchsorted(uniq, candidates), uniq.shape[0] - 1)
    hit = uniq[pos] == candidates
    out[hit] = sums[pos[hit]]
    return out
