"""Category peers: what the catalogue's categories add to the item-item weights.

A shopper who buys in a few aisles tends to buy what sells in those aisles, also items
no co-purchase links to theirs yet (the long tail of a large catalogue, where most pairs
of items were never bought together). `category_peers` writes that as item-item weights:
row j holds the best sellers of j's category, each weighted by its share of the
category's buyers, so ``Σ_{j in S} w_j P[j, c]`` is the shopper's weight on c's
category times c's share of it.

`with_category_peers` adds them to a model's item-item weights at a strength the tuning
chooses (0: the catalogue plays no part, as without one), scaled to those weights so
that one strength means the same on every model. The sum is served as the item-item
term, so the worker's scoring and candidate set take it as they take the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from indexing.items import Item

__all__ = ["PEERS_PER_ITEM", "category_codes", "category_peers", "with_category_peers"]

#: Best sellers kept per category: a top 10 needs few of them, and each one kept is an
#: entry of every row of its category beside the item-item model's top M.
PEERS_PER_ITEM = 50


def category_codes(item_ids: Sequence[str], catalog: Mapping[str, Item]) -> npt.NDArray[np.intp]:
    """Int (n,): a code per distinct category of the items `item_ids` (in order of first
    appearance), -1 where the catalogue has no category for the item."""
    codes: dict[str, int] = {}
    out = np.full(len(item_ids), -1, dtype=np.intp)
    for row, item_id in enumerate(item_ids):
        item = catalog.get(item_id)
        if item is not None and item.category:
            out[row] = codes.setdefault(item.category, len(codes))
    return out


def category_peers(
    categories: npt.NDArray[np.intp], buyers: npt.NDArray[np.floating], top_m: int
) -> sp.csr_matrix:
    """CSR float32 (n, n): row j holds the `top_m` items of j's category with the most
    `buyers` (j itself left out; ties to the lower row), each weighted by its share of its
    category's buyers. Rows of items without a category (code -1), and columns of items
    nobody bought, are empty.

    categories: int (n,) from `category_codes`; buyers: (n,) distinct buyers per item.
    """
    n = categories.shape[0]
    counts = np.asarray(buyers, dtype=np.float64)
    valid = (categories >= 0) & (counts > 0)
    n_cat = int(categories.max(initial=-1)) + 1
    mass = np.bincount(categories[valid], weights=counts[valid], minlength=n_cat)
    indptr = np.zeros(n + 1, dtype=np.int64)
    cols: list[npt.NDArray[np.int32]] = []
    vals: list[npt.NDArray[np.float32]] = []
    # each category's members by buyers (ties: lower row), one more than kept: a member's
    # row leaves itself out of its category's list
    order = np.lexsort((np.arange(n), -counts, categories))
    sorted_cat = categories[order]
    starts = np.searchsorted(sorted_cat, np.arange(n_cat), side="left")
    ends = np.searchsorted(sorted_cat, np.arange(n_cat), side="right")
    head: list[npt.NDArray[np.intp]] = []
    for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
        members = order[lo : min(hi, lo + top_m + 1)]  # most buyers first
        head.append(members[counts[members] > 0])
    lengths = np.zeros(n, dtype=np.int64)
    for row in range(n):
        c = int(categories[row])
        if c < 0 or mass[c] <= 0:
            continue
        peers = head[c]
        peers = peers[peers != row][:top_m]
        cols.append(peers.astype(np.int32))
        vals.append((counts[peers] / mass[c]).astype(np.float32))
        lengths[row] = peers.shape[0]
    np.cumsum(lengths, out=indptr[1:])
    if not cols:
        return sp.csr_matrix((n, n), dtype=np.float32)
    out = sp.csr_matrix(
        (np.concatenate(vals), np.concatenate(cols), indptr), shape=(n, n), dtype=np.float32
    )
    out.sort_indices()
    return out


def with_category_peers(
    similarity: sp.csr_matrix, peers: sp.csr_matrix, strength: float
) -> sp.csr_matrix:
    """`similarity` + `strength` x `peers` scaled to it: a peers row (which sums to at most
    1) is scaled to the mean sum of `similarity`'s non-empty rows. Strength 0 (or no
    peers) returns `similarity` itself."""
    if strength <= 0 or peers.nnz == 0:
        return similarity
    sums = np.asarray(similarity.sum(axis=1)).ravel()
    scale = float(sums[sums > 0].mean()) if (sums > 0).any() else 1.0
    out = sp.csr_matrix(similarity + peers.multiply(np.float32(strength * scale)), dtype=np.float32)
    out.sort_indices()
    return out
