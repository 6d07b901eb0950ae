"""A loaded, verified artifact answering lookups: `LoadedIndex`.

Everything answers item ids and scores only; business filtering (stock, consent, caps)
belongs to the caller. Unknown item ids in a query are ignored (a brand-new item is not
an error on the hot path); `row` and `vector` raise `UnknownItemError` for them.
The object is read-only after load except for the blocked set (`block` / `unblock`), which
removes items from every later answer without a rebuild. Not thread-safe; one per process.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from indexing.blend import Blend, BlendWeights
from indexing.errors import UnknownItemError
from indexing.matrix import Weighting
from indexing.neighbours import Neighbours

__all__ = ["FULL_SCORE_MAX_ITEMS", "LoadedIndex", "Scored"]

#: Catalogs up to this size are scored in full by `recommend` (exactly what the offline
#: evaluation measures); larger ones score a candidate set (see `recommend`).
FULL_SCORE_MAX_ITEMS = 20_000
_CANDIDATES_PER_SOURCE = 200

Scored = list[tuple[str, float]]


class LoadedIndex:
    """Item table + neighbour search + served scoring of one artifact version.

    item_ids: (n,) ids; factors: float32 (n, d) raw ALS factors (may be a memory map);
    norms: float32 (n,); cold: bool (n,); blend: the served `Blend`; neighbours: a
    `Neighbours` over the unit vectors factors / norms, rows aligned with item_ids.
    """

    def __init__(
        self,
        *,
        version: str,
        manifest: Mapping[str, Any],
        item_ids: Sequence[str],
        factors: npt.NDArray[np.float32],
        norms: npt.NDArray[np.float32],
        cold: npt.NDArray[np.bool_],
        blend: Blend,
        neighbours: Neighbours,
    ):
        self.version = version
        self.manifest = dict(manifest)
        self.item_ids: tuple[str, ...] = tuple(item_ids)
        self._ids = np.array(self.item_ids, dtype=object)
        self._row = {item_id: row for row, item_id in enumerate(self.item_ids)}
        self.factors = factors
        self.norms = norms
        # a plain ndarray view of the (possibly memory-mapped) factors: np.memmap indexing
        # costs microseconds per call on the hot path; the view shares the same pages
        self._factors = np.asarray(factors)
        safe = np.where(norms > 0, norms, 1.0).astype(np.float32)
        self._inv_norms = (1.0 / safe).astype(np.float32)
        self.cold = cold
        self.blend = blend
        self.neighbours = neighbours
        self.dim = int(factors.shape[1])
        self._blocked: set[int] = set()
        top = np.argsort(-blend.popularity, kind="stable")[:_CANDIDATES_PER_SOURCE]
        self._popular = top.astype(np.intp)

    # --- the item table -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.item_ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row

    def row(self, item_id: str) -> int:
        """The row of `item_id`; raises `UnknownItemError`."""
        try:
            return self._row[item_id]
        except KeyError:
            raise UnknownItemError(item_id) from None

    def rows(self, item_ids: Iterable[str]) -> npt.NDArray[np.intp]:
        """Int (m,): rows of the known ids among `item_ids`, in order (unknown skipped)."""
        get = self._row.get
        return np.array([r for r in (get(i) for i in item_ids) if r is not None], dtype=np.intp)

    def is_cold(self, item_id: str) -> bool:
        """True when the item's vector comes from its attributes, not interactions."""
        return bool(self.cold[self.row(item_id)])

    def vector(self, item_id: str) -> npt.NDArray[np.float32]:
        """Float32 (d,): the item's unit vector (the one the index holds)."""
        one: npt.NDArray[np.float32] = self.vectors([item_id])[0]
        return one

    def vectors(self, item_ids: Sequence[str]) -> npt.NDArray[np.float32]:
        """Float32 (n, d): each item's unit vector, in one gather (every id must be known;
        a zero vector stays zero)."""
        rows = np.array([self.row(i) for i in item_ids], dtype=np.intp)
        norms = np.asarray(self.norms[rows], dtype=np.float32)
        norms[norms <= 0] = 1.0
        unit: npt.NDArray[np.float32] = np.asarray(self.factors[rows], dtype=np.float32)
        return unit / norms[:, None]

    # --- exclusions without a rebuild ---------------------------------------------------
    def block(self, item_ids: Iterable[str]) -> None:
        """Leave these items out of every later answer (sold out, withdrawn)."""
        rows = self.rows(item_ids).tolist()
        self._blocked.update(rows)
        self.neighbours.block(rows)

    def unblock(self, item_ids: Iterable[str]) -> None:
        rows = self.rows(item_ids).tolist()
        self._blocked.difference_update(rows)
        self.neighbours.unblock(rows)

    # --- neighbour search ---------------------------------------------------------------
    def _answer(self, scores: npt.NDArray[np.float32], rows: npt.NDArray[np.int64]) -> list[Scored]:
        out: list[Scored] = []
        ids = self._ids
        for srow, rrow in zip(scores, rows, strict=True):
            keep = rrow >= 0
            out.append(list(zip(ids[rrow[keep]].tolist(), srow[keep].tolist(), strict=True)))
        return out

    def search(
        self, vectors: npt.NDArray[np.float32], k: int = 10, exclude: Collection[str] = ()
    ) -> list[Scored]:
        """Per query row of `vectors` (float32 (n, d) or (d,)), the k items with the highest
        inner product (cosine for unit queries), skipping `exclude` and blocked items."""
        ex = set(self.rows(exclude).tolist())
        scores, rows = self.neighbours.search(vectors, k, ex)
        return self._answer(scores, rows)

    def similar(
        self, item_ids: Sequence[str], k: int = 10, exclude: Collection[str] = ()
    ) -> list[Scored]:
        """Per item of `item_ids`, its k most similar items (never itself), skipping
        `exclude` and blocked items. An unknown id answers an empty list."""
        get = self._row.get
        out: list[Scored] = [[] for _ in item_ids]
        positions: list[int] = []
        q_rows: list[int] = []
        for pos, item_id in enumerate(item_ids):
            row = get(item_id)
            if row is not None:
                positions.append(pos)
                q_rows.append(row)
        if not q_rows:
            return out
        ex = set(self.rows(exclude).tolist()) if exclude else ()
        # search with the raw factor and rescale the scores: scaling a query by a positive
        # number changes neither the exact nor the HNSW ranking, and saves a copy
        scores, rows = self.neighbours.search(self._factors[q_rows], k + 1, ex)
        scores *= self._inv_norms[q_rows, None]
        ids = self.item_ids
        for pos, own, srow, rrow in zip(
            positions, q_rows, scores.tolist(), rows.tolist(), strict=True
        ):
            out[pos] = [
                (ids[r], s) for r, s in zip(rrow, srow, strict=True) if r >= 0 and r != own
            ][:k]
        return out

    # --- shoppers -----------------------------------------------------------------------
    @property
    def history_weighting(self) -> Weighting:
        """How to weight a shopper's recent events for this version (type weights and the
        history half-life it was tuned with); see `recent_item_weights`."""
        params = self.manifest["params"]
        return Weighting(
            dict(params["weighting"]["type_weights"]), params["history_half_life_days"]
        )

    @property
    def history_items(self) -> int:
        """How many recent items the served model was evaluated with (pass at most these)."""
        return int(self.manifest["params"]["history_items"])

    def fold_in(
        self, item_ids: Sequence[str], weights: Sequence[float] | None = None
    ) -> npt.NDArray[np.float32]:
        """Float32 (d,) unit shopper vector from recent items and raw weights (type weight x
        decay, see docs/indexing.md). Unknown items are skipped; none known gives zeros."""
        rows, w = self._known(item_ids, weights)
        u = self.blend.fold_in(rows, w)
        norm = float(np.linalg.norm(u))
        return (u / norm).astype(np.float32) if norm > 0 else u

    def _known(
        self, item_ids: Sequence[str], weights: Sequence[float] | None
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
        get = self._row.get
        if weights is None:
            weights = [1.0] * len(item_ids)
        pairs = [(get(i), w) for i, w in zip(item_ids, weights, strict=True)]
        rows = np.array([r for r, _ in pairs if r is not None], dtype=np.intp)
        w = np.array([w for r, w in pairs if r is not None], dtype=np.float64)
        return rows, w

    def score(
        self,
        item_ids: Sequence[str],
        weights: Sequence[float] | None,
        candidates: Sequence[str],
        blend: BlendWeights | None = None,
    ) -> list[float]:
        """The served score of each of `candidates` for a shopper whose recent items are
        `item_ids` with raw `weights`; NaN for an unknown candidate.

        Each signal is normalised by its maximum over candidates plus recent items (the recent
        items are scored, then left out of the answer). `recommend` normalises over the whole
        catalog (up to `FULL_SCORE_MAX_ITEMS`) or over its candidate set plus recent items, so
        the two agree exactly when those maxima agree — typically they sit on or next to
        the shopper's own items.
        """
        rows, w = self._known(item_ids, weights)
        cand = [self._row.get(c) for c in candidates]
        known = np.array([c for c in cand if c is not None], dtype=np.intp)
        scored = np.concatenate([known, rows])
        values = self.blend.score(rows, w, scored, blend)[: known.shape[0]]
        it = iter(values.tolist())
        return [next(it) if c is not None else float("nan") for c in cand]

    def recommend(
        self,
        item_ids: Sequence[str],
        weights: Sequence[float] | None = None,
        k: int = 10,
        exclude: Collection[str] = (),
        blend: BlendWeights | None = None,
    ) -> Scored:
        """The served model's top k for a shopper from recent items and raw weights.

        Never returns the shopper's own recent items, `exclude` or blocked items. Catalogs
        up to `FULL_SCORE_MAX_ITEMS` are scored in full; larger ones score the union of the
        fold-in vector's 200 nearest items, the KNN neighbours of the recent items and the
        200 most popular recent items. Excluded items are dropped *after* scoring, because
        `Blend.score` normalises each signal by its maximum over the scored set — exactly
        as the offline evaluation scores every warm item, the shopper's own included.
        """
        rows, w = self._known(item_ids, weights)
        banned = set(rows.tolist()) | set(self.rows(exclude).tolist()) | self._blocked
        n = len(self.item_ids)
        if n <= FULL_SCORE_MAX_ITEMS:
            cand = np.arange(n, dtype=np.intp)
            s = self.blend.score(rows, w, None, blend).astype(np.float64)
            keep = np.ones(n, dtype=bool)
            keep[list(banned)] = False
            return self._top(cand[keep], s[keep], k)
        else:
            parts = [self._popular]
            if rows.shape[0]:
                u = self.blend.fold_in(rows, w)
                _, near = self.neighbours.search(u[None, :], _CANDIDATES_PER_SOURCE, banned)
                parts.append(near[0][near[0] >= 0].astype(np.intp))
                sim = self.blend.similarity
                parts.extend(
                    sim.indices[sim.indptr[r] : sim.indptr[r + 1]].astype(np.intp)
                    for r in rows.tolist()
                )
            parts.append(rows)
            cand = np.unique(np.concatenate(parts))
        s = self.blend.score(rows, w, cand, blend).astype(np.float64)
        if banned:
            keep = ~np.isin(cand, np.fromiter(banned, dtype=np.intp, count=len(banned)))
            cand, s = cand[keep], s[keep]
        return self._top(cand, s, k)

    def _top(self, cand: npt.NDArray[np.intp], s: npt.NDArray[np.float64], k: int) -> Scored:
        """The k best of `cand` by score `s`, ties by row."""
        if cand.shape[0] == 0:
            return []
        m = min(k, cand.shape[0])
        top = np.argpartition(-s, m - 1)[:m]
        top = top[np.lexsort((cand[top], -s[top]))]
        return list(zip(self._ids[cand[top]].tolist(), s[top].tolist(), strict=True))
