"""Item-KNN: cosine similarity on co-occurrence, truncated to each item's top M neighbours.

``sim(i, j) = |U_i ∩ U_j| / sqrt(|U_i| |U_j|)`` over the sets of users who touched each
item; the diagonal is zero. The result is a CSR float32 (n_items, n_items) matrix with at
most M stored entries per row, so it scales to large catalogs and fits in the artifact.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

__all__ = ["item_similarity", "knn_scores"]

_BLOCK = 2048


def item_similarity(user_items: sp.csr_matrix, top_m: int = 100) -> sp.csr_matrix:
    """CSR float32 (n_items, n_items): cosine co-occurrence, top `top_m` per row, ties by id.

    user_items: any users x items matrix; only its pattern (nonzero cells) is used.
    """
    x = sp.csr_matrix(user_items, dtype=np.float32, copy=True)
    x.data[:] = 1.0
    xt = sp.csr_matrix(x.T)
    counts = np.asarray(x.sum(axis=0)).ravel().astype(np.float32)
    inv = np.zeros_like(counts)
    np.divide(1.0, np.sqrt(counts), out=inv, where=counts > 0)
    n = x.shape[1]
    rows: list[npt.NDArray[np.int64]] = []
    cols: list[npt.NDArray[np.int64]] = []
    vals: list[npt.NDArray[np.float32]] = []
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        co = (xt[start:stop] @ x).toarray()
        co *= inv[start:stop, None]
        co *= inv[None, :]
        co[np.arange(stop - start), np.arange(start, stop)] = 0.0
        m = min(top_m, n - 1) if n > 1 else 0
        if m <= 0:
            continue
        # stable order: by score desc, then item id asc
        part = np.argpartition(-co, m - 1, axis=1)[:, :m] if m < n else np.argsort(-co, axis=1)
        for r in range(stop - start):
            cand = part[r]
            s = co[r, cand]
            keep = s > 0
            cand, s = cand[keep], s[keep]
            order = np.lexsort((cand, -s))
            rows.append(np.full(order.shape[0], start + r, dtype=np.int64))
            cols.append(cand[order].astype(np.int64))
            vals.append(s[order].astype(np.float32))
    if rows:
        sim = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
        )
    else:
        sim = sp.csr_matrix((n, n), dtype=np.float32)
    sim.sort_indices()
    return sp.csr_matrix(sim, dtype=np.float32)


def knn_scores(
    sim: sp.csr_matrix, rows: npt.NDArray[np.intp], weights: npt.NDArray[np.floating]
) -> npt.NDArray[np.float32]:
    """Float32 (n_items,): ``Σ_j weights[j] * sim[rows[j], :]`` (one shopper's KNN scores)."""
    out = np.zeros(sim.shape[1], dtype=np.float32)
    indptr, indices, data = sim.indptr, sim.indices, sim.data
    for r, w in zip(np.asarray(rows).tolist(), np.asarray(weights).tolist(), strict=True):
        lo, hi = indptr[r], indptr[r + 1]
        out[indices[lo:hi]] += np.float32(w) * data[lo:hi]
    return out
