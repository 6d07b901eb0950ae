"""Item-item models beside cosine KNN: BM25-weighted KNN, EASE and RP3beta.

Each turns the pattern of a users x items matrix (who touched what) into item-item weights
W, where a shopper with items S scores item j by ``Σ_{i in S} w_i W[i, j]``:

- `cosine`: ``|U_i ∩ U_j| / sqrt(|U_i| |U_j|)`` (`indexing.knn.item_similarity`).
- `bm25`: the dot product of BM25-weighted item rows (shoppers with many items and items
  with many shoppers count less), as in `implicit`'s BM25Recommender.
- `ease` (Steck 2019): ``B = I - P diagMat(1 / diag(P))``, ``P = (XᵀX + λI)⁻¹``, diagonal 0.
  Dense, so it is computed over the `max_items` most popular items only.
- `rp3beta` (Christoffel et al. 2015; Dacrema et al. 2019): the 3-step random walk
  item -> shopper -> item with transition probabilities raised to alpha, each
  target item's column divided by its popularity to the power beta.

`item_item(pattern, params)` keeps the `top_m` largest positive weights per source row as a
CSR float32 (n_items, n_items), the same shape `indexing.blend.Blend` serves; `ease_weights`
keeps EASE dense for the baseline ranker.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.linalg import lapack

from indexing.knn import binary_pattern, item_similarity, top_m_products
from indexing.ranking import top_indices

__all__ = [
    "EASE_MAX_ITEMS",
    "ITEM_ITEM_KINDS",
    "EaseWeights",
    "ItemItemParams",
    "bm25_item_rows",
    "ease_weights",
    "item_item",
    "truncate_rows",
]

#: EASE is dense: its cost is O(m³) time and 2 m² float32 memory over m items.
EASE_MAX_ITEMS = 6_000

ItemItemKind = Literal["cosine", "bm25", "ease", "rp3beta"]
ITEM_ITEM_KINDS: tuple[ItemItemKind, ...] = ("cosine", "bm25", "ease", "rp3beta")


@dataclass(frozen=True)
class ItemItemParams:
    """Which item-item model and its knobs (only the kind's own knobs are used).

    top_m: neighbours kept per item; l2: EASE's λ; ease_max_items: EASE's dense size cap;
    alpha / beta: RP3beta's exponents; k1 / b: BM25's saturation and length normalisation.
    """

    kind: ItemItemKind = "cosine"
    top_m: int = 20
    l2: float = 500.0
    ease_max_items: int = EASE_MAX_ITEMS
    alpha: float = 1.0
    beta: float = 0.5
    k1: float = 100.0
    b: float = 0.8

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def label(self) -> str:
        """A short name for tables: the kind and its own knobs."""
        own = {
            "cosine": f"M={self.top_m}",
            "bm25": f"M={self.top_m}",
            "ease": f"λ={self.l2:g} M={self.top_m}",
            "rp3beta": f"alpha={self.alpha:g} beta={self.beta:g} M={self.top_m}",
        }[self.kind]
        return f"{self.kind} ({own})"


def item_item(user_items: sp.spmatrix, params: ItemItemParams) -> sp.csr_matrix:
    """CSR float32 (n_items, n_items): the `top_m` largest positive weights per source item
    (ties: lower column first), diagonal zero. Only the pattern of `user_items` is used."""
    if params.kind == "cosine":
        return item_similarity(user_items, params.top_m)
    x = binary_pattern(user_items)
    if params.kind == "bm25":
        rows = bm25_item_rows(x, params.k1, params.b)
        return top_m_products(rows, sp.csr_matrix(rows.T), params.top_m)
    if params.kind == "rp3beta":
        return _rp3beta(x, params.alpha, params.beta, params.top_m)
    if params.kind == "ease":
        ease = ease_weights(x, params.l2, params.ease_max_items)
        return ease.sparse(params.top_m)
    raise ValueError(f"unknown item-item kind {params.kind!r}")


def truncate_rows(sim: sp.csr_matrix, top_m: int) -> sp.csr_matrix:
    """The `top_m` largest entries of each row of a top-M CSR (ties: lower column first):
    tuning builds one wide matrix and reads the narrower ones from it."""
    indptr = [0]
    cols: list[npt.NDArray[np.int32]] = []
    vals: list[npt.NDArray[np.float32]] = []
    for r in range(sim.shape[0]):
        lo, hi = sim.indptr[r], sim.indptr[r + 1]
        c, v = sim.indices[lo:hi], sim.data[lo:hi]
        order = np.lexsort((c, -v))[:top_m]
        cols.append(c[order].astype(np.int32))
        vals.append(v[order].astype(np.float32))
        indptr.append(indptr[-1] + order.shape[0])
    n = sim.shape[0]
    if not cols:
        return sp.csr_matrix(sim.shape, dtype=np.float32)
    return sp.csr_matrix(
        (np.concatenate(vals), np.concatenate(cols), np.asarray(indptr, dtype=np.int64)),
        shape=(n, sim.shape[1]),
    )


def bm25_item_rows(x: sp.csr_matrix, k1: float = 100.0, b: float = 0.8) -> sp.csr_matrix:
    """CSR float32 (n_items, n_users): BM25 weight of each (item, shopper) cell of binary
    `x` (users x items), the item as the "document" and shoppers as its "terms"."""
    items = sp.csr_matrix(x.T, dtype=np.float64)
    n_items = items.shape[0]
    items_per_user = np.bincount(items.indices, minlength=items.shape[1]).astype(np.float64)
    idf = np.log(n_items) - np.log1p(items_per_user)
    length = np.diff(items.indptr).astype(np.float64)
    avg = float(length.mean()) if n_items else 0.0
    norm = (1.0 - b) + b * length / avg if avg > 0 else np.ones(n_items)
    row_norm = np.repeat(norm, np.diff(items.indptr))
    tf = items.data
    items.data = tf * (k1 + 1.0) / (k1 * row_norm + tf) * idf[items.indices]
    return sp.csr_matrix(items, dtype=np.float32)


def _rp3beta(x: sp.csr_matrix, alpha: float, beta: float, top_m: int) -> sp.csr_matrix:
    """RP3beta: W = P_iu^alpha P_ui^alpha, column j divided by pop_j^beta, top M per row."""
    per_user = np.asarray(x.sum(axis=1)).ravel()
    per_item = np.asarray(x.sum(axis=0)).ravel()
    p_ui = sp.csr_matrix(x, dtype=np.float64, copy=True)
    p_ui.data = (1.0 / per_user[np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))]) ** alpha
    p_iu = sp.csr_matrix(x.T, dtype=np.float64)
    p_iu.data = (1.0 / per_item[np.repeat(np.arange(x.shape[1]), np.diff(p_iu.indptr))]) ** alpha
    col_scale = np.zeros(x.shape[1])
    np.power(per_item, -beta, out=col_scale, where=per_item > 0)
    return top_m_products(
        sp.csr_matrix(p_iu, dtype=np.float32),
        sp.csr_matrix(p_ui, dtype=np.float32),
        top_m,
        col_scale=col_scale.astype(np.float32),
    )


@dataclass(frozen=True)
class EaseWeights:
    """EASE over `items` (int (m,), the most popular item codes): dense float32 (m, m) B
    with zero diagonal; the scores of a shopper x (over all n items) are ``x[items] @ B``
    at `items`, and 0 elsewhere."""

    items: npt.NDArray[np.intp]
    weights: npt.NDArray[np.float32]
    n_items: int

    def sparse(self, top_m: int) -> sp.csr_matrix:
        """The top-M positive weights per source item as CSR (n_items, n_items)."""
        m = self.items.shape[0]
        n = self.n_items
        rows: list[npt.NDArray[np.intp]] = []
        cols: list[npt.NDArray[np.intp]] = []
        vals: list[npt.NDArray[np.float32]] = []
        for r in range(m):
            w = self.weights[r]
            # self.items is ascending, so the lower position is the lower column
            top = top_indices(w, top_m)
            top = top[w[top] > 0]
            rows.append(np.full(top.shape[0], self.items[r], dtype=np.intp))
            cols.append(self.items[top])
            vals.append(w[top])
        if not rows:
            return sp.csr_matrix((n, n), dtype=np.float32)
        out = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
        )
        return sp.csr_matrix(out, dtype=np.float32)


def ease_weights(
    user_items: sp.spmatrix, l2: float, max_items: int = EASE_MAX_ITEMS
) -> EaseWeights:
    """EASE's closed form over the `max_items` items with the most shoppers (ties: lower
    code), m = min(max_items, items with a shopper): O(m³) time, two m x m float32
    matrices (0.29 GB at m = 6,000)."""
    x = binary_pattern(user_items)
    n = x.shape[1]
    counts = np.asarray(x.sum(axis=0)).ravel()
    m = int(min(max_items, int((counts > 0).sum())))
    items = np.sort(np.lexsort((np.arange(n), -counts))[:m]).astype(np.intp)
    xs = sp.csc_matrix(x[:, items])
    gram = np.asarray((xs.T @ xs).toarray(), dtype=np.float32)
    gram[np.diag_indices(m)] += np.float32(l2)
    # Cholesky inverse: the Gram matrix plus λI is symmetric positive definite
    factor, info = lapack.spotrf(gram, lower=1, overwrite_a=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: Gram matrix not positive definite ({info})")
    p, info = lapack.spotri(factor, lower=1, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: inverse failed ({info})")
    p = np.tril(p) + np.tril(p, -1).T
    b = -p / np.diag(p)[None, :]
    b[np.diag_indices(m)] = 0.0
    return EaseWeights(items=items, weights=np.ascontiguousarray(b, dtype=np.float32), n_items=n)
