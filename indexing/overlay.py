"""Items a loaded index learns after its build: `Overlay`, a small table beside the built rows.

The built rows (item table, FAISS index, blend arrays) are read-only and may be memory
maps of a million rows; an item added at run time goes into this separate table instead,
searched exactly with numpy and merged with the FAISS answers by `LoadedIndex`. It is
bounded (`OVERLAY_MAX_ITEMS`: past the cap new ids are refused until the next build, which
knows them and starts with an empty overlay) and immutable: a change returns a new table,
so a reader in another thread keeps a consistent one.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["OVERLAY_MAX_ITEMS", "Overlay"]

#: At most this many overlay items (an exact search costs ~11 µs per 1,000 per query).
OVERLAY_MAX_ITEMS = 10_000

Scored = list[tuple[str, float]]


@dataclass(frozen=True)
class Overlay:
    """item_ids: (m,) ids; factors: float32 (m, d) raw factors; inv_norms: float32 (m,) 1 /
    each row's norm (1 for a zero row); unit: factors * inv_norms; row: id -> row."""

    item_ids: tuple[str, ...]
    factors: npt.NDArray[np.float32]
    inv_norms: npt.NDArray[np.float32]
    unit: npt.NDArray[np.float32]
    row: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def empty(cls, dim: int) -> Overlay:
        none = np.zeros((0, dim), dtype=np.float32)
        return cls((), none, np.zeros(0, dtype=np.float32), none)

    def __len__(self) -> int:
        return len(self.item_ids)

    def rows(self, item_ids: Collection[str]) -> list[int]:
        """Rows of the overlay items among `item_ids` (others skipped)."""
        get = self.row.get
        return [r for r in (get(i) for i in item_ids) if r is not None]

    def with_items(
        self, item_ids: Sequence[str], factors: npt.NDArray[np.float32], max_items: int
    ) -> tuple[Overlay, list[str]]:
        """A new overlay holding `item_ids` with raw `factors` (float32 (n, d)): a present id
        gets its new vector, a new one a new row while fewer than `max_items` are held (the
        rest are refused). Returns it and the ids taken, in order (the last of repeats)."""
        dim = self.factors.shape[1]
        given = np.asarray(factors, dtype=np.float32).reshape(len(item_ids), dim)
        ids = list(self.item_ids)
        row = dict(self.row)
        target: dict[str, int] = {}
        for pos, item_id in enumerate(item_ids):
            if item_id not in row:
                if len(ids) >= max_items:
                    continue
                row[item_id] = len(ids)
                ids.append(item_id)
            target[item_id] = pos
        if not target:
            return self, []
        table = np.zeros((len(ids), dim), dtype=np.float32)
        table[: len(self)] = self.factors
        table[[row[i] for i in target]] = given[list(target.values())]
        norms = np.linalg.norm(table, axis=1)
        inv = (1.0 / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        return Overlay(tuple(ids), table, inv, table * inv[:, None], row), list(target)

    def best(
        self, scores: npt.NDArray[np.floating], k: int, banned: Collection[int] = ()
    ) -> Scored:
        """The k best overlay items by `scores` (one per row), ties by row, skipping
        `banned` rows."""
        s = np.array(scores, dtype=np.float64)
        if banned:
            s[list(banned)] = -np.inf
        rows = np.flatnonzero(np.isfinite(s))
        if 0 < k < rows.shape[0]:  # a partition first: a full sort of 10,000 costs ~1 ms
            kth = np.partition(s[rows], rows.shape[0] - k)[rows.shape[0] - k]
            rows = rows[s[rows] >= kth]
        top = rows[np.lexsort((rows, -s[rows]))][: max(k, 0)]
        return [(self.item_ids[r], float(s[r])) for r in top.tolist()]

    def search(
        self,
        queries: npt.NDArray[np.float32],
        k: int,
        banned: Collection[int] = (),
        own: Sequence[int] | None = None,
    ) -> list[Scored]:
        """Per query row (float32 (n, d)), the k overlay items of highest inner product with
        their unit vectors, skipping `banned` rows and the query's `own` row (-1: none)."""
        if not len(self):
            return [[] for _ in range(queries.shape[0])]
        scores = queries @ self.unit.T
        out: list[Scored] = []
        for q in range(queries.shape[0]):
            skip = banned
            if own is not None and own[q] >= 0:
                skip = {*banned, own[q]}
            out.append(self.best(scores[q], k, skip))
        return out


def merge(built: Scored, extra: Scored, k: int) -> Scored:
    """One best-first answer of at most k from a built and an overlay answer (each best
    first); equal scores keep the built item first."""
    if not extra:
        return built[:k]
    return sorted(built + extra, key=lambda pair: -pair[1])[:k]
