"""The neighbour-search seam: `Neighbours.search(queries, k, exclude) -> (scores, rows)`.

Two implementations answer the same contract (one test module runs against both):
`FaissNeighbours` over a FAISS index (flat or HNSW) and `ExactNeighbours`, a brute-force
numpy fake used by tests and the offline evaluation.

Exclusion: rows that are *blocked* (sold out, withdrawn: a persistent set changed without a
rebuild) are filtered inside FAISS by an `IDSelectorBitmap`; per-query `exclude` rows (a
shopper's purchases) are handled by over-fetching ``k + len(exclude)`` and dropping them.
Results are sorted by score, padded with row -1 and score -inf when fewer than k remain.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any, Protocol

import faiss
import numpy as np
import numpy.typing as npt

__all__ = ["ExactNeighbours", "FaissNeighbours", "Neighbours", "configure_threads"]


def configure_threads() -> None:
    """Set FAISS (OpenMP) and BLAS to one thread in this process.

    Call once in every worker process after fork, before the first search: a child can
    hang searching an index its parent searched with several threads, and a single query is
    faster on one thread.
    """
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(1)
    threadpool_limits(1)


class Neighbours(Protocol):
    """Maximum-inner-product search over the rows of an item table."""

    @property
    def count(self) -> int: ...

    def search(
        self, queries: npt.NDArray[np.float32], k: int, exclude: Collection[int] = ()
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Scores float32 (n, k) and rows int64 (n, k) of the best rows per query row of
        `queries` (float32 (n, d)), skipping blocked rows and `exclude` (for every query)."""
        ...

    def block(self, rows: Iterable[int]) -> None:
        """Leave these rows out of every later search (until `unblock`)."""
        ...

    def unblock(self, rows: Iterable[int]) -> None: ...


def _finish(
    scores: npt.NDArray[np.float32],
    rows: npt.NDArray[np.int64],
    k: int,
    exclude: Collection[int],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    if exclude:
        # a few short rows (the hot path): plain Python beats a dozen numpy calls
        banned = exclude if isinstance(exclude, (set, frozenset)) else set(exclude)
        out_rows = np.full((rows.shape[0], k), -1, dtype=np.int64)
        out_scores = np.full((rows.shape[0], k), -np.inf, dtype=np.float32)
        for n, (rrow, srow) in enumerate(zip(rows.tolist(), scores.tolist(), strict=True)):
            kept = [(r, s) for r, s in zip(rrow, srow, strict=True) if r >= 0 and r not in banned]
            if kept := kept[:k]:
                out_rows[n, : len(kept)] = [r for r, _ in kept]
                out_scores[n, : len(kept)] = [s for _, s in kept]
        return out_scores, out_rows
    rows, scores = rows[:, :k], scores[:, :k]
    scores = np.where(rows < 0, -np.inf, scores).astype(np.float32)
    return scores, rows


class FaissNeighbours:
    """`Neighbours` over a FAISS index whose ids are item rows (0..n-1).

    ef_search: HNSW search depth (set explicitly; FAISS's default of 16 is too low); raised
    to the fetch size when a query asks for more.
    """

    def __init__(self, index: Any, ef_search: int | None = None):
        self.index: Any = index
        self._hnsw = isinstance(index, faiss.IndexHNSW)
        self.ef_search = int(ef_search or (index.hnsw.efSearch if self._hnsw else 0))
        if self._hnsw:
            index.hnsw.efSearch = self.ef_search
        n = self._count = int(index.ntotal)
        self._dim = int(index.d)
        self._allowed = np.full((n + 7) // 8, 0xFF, dtype=np.uint8)
        self._blocked: set[int] = set()
        self._selector: faiss.IDSelector | None = None
        self._params: faiss.SearchParameters | None = None

    @property
    def count(self) -> int:
        return self._count

    def _refresh(self) -> None:
        if not self._blocked:
            self._selector = None
            return
        # IDSelectorBitmap keeps a raw pointer into _allowed: the array lives on self
        self._selector = faiss.IDSelectorBitmap(self.count, faiss.swig_ptr(self._allowed))

    def block(self, rows: Iterable[int]) -> None:
        for row in rows:
            if 0 <= row < self.count:
                self._allowed[row >> 3] &= np.uint8(~(1 << (row & 7)) & 0xFF)
                self._blocked.add(row)
        self._refresh()

    def unblock(self, rows: Iterable[int]) -> None:
        for row in rows:
            if row in self._blocked:
                self._allowed[row >> 3] |= np.uint8(1 << (row & 7))
                self._blocked.discard(row)
        self._refresh()

    def search(
        self, queries: npt.NDArray[np.float32], k: int, exclude: Collection[int] = ()
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        fetch = min(k + len(exclude), self._count)
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self._dim)
        if self._selector is None and (not self._hnsw or fetch <= self.ef_search):
            # the hot path: no per-call parameter object (efSearch is set on the index)
            scores, rows = self.index.search(q, fetch)
        elif self._hnsw:
            params: Any = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            params.efSearch = max(self.ef_search, fetch)
            if self._selector is not None:
                params.sel = self._selector
            scores, rows = self.index.search(q, fetch, params=params)
        else:
            flat_params: Any = faiss.SearchParameters()
            flat_params.sel = self._selector
            scores, rows = self.index.search(q, fetch, params=flat_params)
        if fetch < k:
            pad = k - fetch
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        if not exclude and fetch == k:
            return scores, rows
        return _finish(scores, rows, k, exclude)


class ExactNeighbours:
    """Brute-force numpy `Neighbours` over `vectors` (float32 (n, d)); the test fake."""

    def __init__(self, vectors: npt.NDArray[np.float32]):
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._blocked: set[int] = set()

    @property
    def count(self) -> int:
        return int(self.vectors.shape[0])

    def block(self, rows: Iterable[int]) -> None:
        self._blocked.update(r for r in rows if 0 <= r < self.count)

    def unblock(self, rows: Iterable[int]) -> None:
        self._blocked.difference_update(rows)

    def search(
        self, queries: npt.NDArray[np.float32], k: int, exclude: Collection[int] = ()
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        q = np.asarray(queries, dtype=np.float32).reshape(-1, self.vectors.shape[1])
        s = (q @ self.vectors.T).astype(np.float64)
        banned = list(self._blocked | set(exclude))
        if banned:
            s[:, banned] = -np.inf
        ids = np.arange(self.count)
        rows = np.empty((q.shape[0], k), dtype=np.int64)
        scores = np.empty((q.shape[0], k), dtype=np.float32)
        for r in range(q.shape[0]):
            order = np.lexsort((ids, -s[r]))[:k]
            got = order[np.isfinite(s[r, order])]
            rows[r] = np.pad(got, (0, k - got.shape[0]), constant_values=-1)
            scores[r] = np.pad(s[r, got], (0, k - got.shape[0]), constant_values=-np.inf)
        return scores, rows
