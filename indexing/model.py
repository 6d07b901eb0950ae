"""A trained model: everything the served scoring needs, on one item table.

`train_model` turns an event log (and optionally the catalog) into a `TrainedModel`:
ALS item factors, item-KNN similarities, recent popularity and cold-start vectors. Item
rows are the warm items (with interactions) in first-seen order, then cold items (catalog
items without interactions but with a category or brand) sorted by id.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from indexing.baselines import popularity
from indexing.blend import Blend, BlendWeights
from indexing.errors import EmptyDataError
from indexing.events import EventLog
from indexing.factors import AlsParams, FoldIn, train_als
from indexing.items import Item
from indexing.knn import item_similarity
from indexing.matrix import Weighting, interaction_matrix

__all__ = ["ModelParams", "TrainedModel", "cold_start_vectors", "train_model"]

_DAY = 86_400.0


@dataclass(frozen=True)
class ModelParams:
    """Every hyperparameter of the served model (defaults: tuned on Online Retail)."""

    als: AlsParams = field(default_factory=AlsParams)
    weighting: Weighting = field(default_factory=lambda: Weighting(half_life_days=60.0))
    history_half_life_days: float | None = 90.0
    history_items: int = 50
    knn_top_m: int = 20
    recent_days: float = 3.0
    blend: BlendWeights = field(default_factory=lambda: BlendWeights(mf=1.0, knn=0.3, pop=1.0))

    @property
    def history_weighting(self) -> Weighting:
        return Weighting(self.weighting.type_weights, self.history_half_life_days)

    def as_dict(self) -> dict[str, object]:
        return {
            "als": self.als.as_dict(),
            "weighting": self.weighting.as_dict(),
            "history_half_life_days": self.history_half_life_days,
            "history_items": self.history_items,
            "knn_top_m": self.knn_top_m,
            "recent_days": self.recent_days,
            "blend": self.blend.as_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ModelParams:
        """Inverse of `as_dict`; raises TypeError / ValueError / KeyError when malformed."""
        als = data["als"]
        weighting = data["weighting"]
        blend = data["blend"]
        if not (isinstance(als, dict) and isinstance(weighting, dict) and isinstance(blend, dict)):
            raise TypeError("params.als, params.weighting and params.blend must be objects")
        return cls(
            als=AlsParams(**als),
            weighting=Weighting(**weighting),
            history_half_life_days=_opt_float(data.get("history_half_life_days")),
            history_items=int(str(data.get("history_items", 50))),
            knn_top_m=int(str(data.get("knn_top_m", 50))),
            recent_days=float(str(data.get("recent_days", 14.0))),
            blend=BlendWeights(**blend),
        )


def _opt_float(value: object) -> float | None:
    return None if value is None else float(str(value))


@dataclass(frozen=True)
class TrainedModel:
    """The served model on one item table.

    item_ids: (n,) ids of rows; factors: float32 (n, d) raw ALS factors (cold rows: the
    attribute mean); cold: bool (n,); similarity: CSR float32 (n, n) top-M item-KNN (cold
    rows empty); recent_popularity: float32 (n,) distinct users in the last `recent_days`.
    """

    item_ids: tuple[str, ...]
    factors: npt.NDArray[np.float32]
    cold: npt.NDArray[np.bool_]
    similarity: sp.csr_matrix
    recent_popularity: npt.NDArray[np.float32]
    params: ModelParams
    counts: dict[str, int]

    def blend(self) -> Blend:
        return Blend(
            self.factors,
            FoldIn(
                self.factors,
                self.params.als.regularization,
                self.params.als.alpha,
                trained_rows=~self.cold,
            ),
            self.similarity,
            self.recent_popularity,
            self.params.blend,
        )


def cold_start_vectors(
    factors: npt.NDArray[np.float32],
    warm_ids: tuple[str, ...],
    catalog: Mapping[str, Item],
) -> tuple[list[str], npt.NDArray[np.float32]]:
    """Vectors for catalog items without interactions: the mean factor of warm items of the
    same category, else of the same brand. Items with neither (or no warm peer) get none.

    Returns (cold ids sorted, float32 (n_cold, d)).
    """
    by_cat: dict[str, list[int]] = defaultdict(list)
    by_brand: dict[str, list[int]] = defaultdict(list)
    warm = set(warm_ids)
    for row, item_id in enumerate(warm_ids):
        item = catalog.get(item_id)
        if item is None:
            continue
        if item.category:
            by_cat[item.category].append(row)
        if item.brand:
            by_brand[item.brand].append(row)
    ids: list[str] = []
    vecs: list[npt.NDArray[np.float32]] = []
    for item_id in sorted(set(catalog) - warm):
        item = catalog[item_id]
        peers = by_cat.get(item.category) if item.category else None
        if not peers and item.brand:
            peers = by_brand.get(item.brand)
        if not peers:
            continue
        ids.append(item_id)
        vecs.append(factors[peers].mean(axis=0).astype(np.float32))
    d = factors.shape[1]
    return ids, np.array(vecs, dtype=np.float32).reshape(len(ids), d)


def train_model(
    log: EventLog,
    params: ModelParams,
    *,
    catalog: Mapping[str, Item] | None = None,
    as_of: float | None = None,
) -> TrainedModel:
    """Train the served model on `log` as seen at `as_of` (default: its last event).

    Raises `EmptyDataError` when no item has a positive weight.
    """
    as_of = float(log.ts.max()) if as_of is None else as_of
    raw = interaction_matrix(log, params.weighting, as_of=as_of)
    warm_cols = np.flatnonzero(np.diff(sp.csc_matrix(raw).indptr) > 0)
    if warm_cols.size == 0:
        raise EmptyDataError("no item has a positive interaction weight")
    raw = sp.csr_matrix(raw[:, warm_cols])
    factors = train_als(raw, params.als)
    warm_ids = tuple(log.item_ids[c] for c in warm_cols.tolist())
    cold_ids, cold_vecs = cold_start_vectors(factors.items, warm_ids, catalog or {})
    n_warm, n_cold = len(warm_ids), len(cold_ids)
    n = n_warm + n_cold
    sim = item_similarity(raw, params.knn_top_m)
    sim = sp.csr_matrix(
        (sim.data, sim.indices, np.concatenate([sim.indptr, np.full(n_cold, sim.indptr[-1])])),
        shape=(n, n),
    )
    remap = np.full(len(log.item_ids), -1, dtype=np.int64)
    remap[warm_cols] = np.arange(n_warm)
    keep = remap[log.items] >= 0
    pop_warm = popularity(
        log.users[keep],
        remap[log.items[keep]].astype(np.int32),
        log.ts[keep],
        n_warm,
        since=as_of - params.recent_days * _DAY,
    )
    return TrainedModel(
        item_ids=warm_ids + tuple(cold_ids),
        factors=np.ascontiguousarray(np.vstack([factors.items, cold_vecs]), dtype=np.float32),
        cold=np.concatenate([np.zeros(n_warm, bool), np.ones(n_cold, bool)]),
        similarity=sim,
        recent_popularity=np.concatenate([pop_warm, np.zeros(n_cold, np.float32)]),
        params=params,
        counts={
            "events": len(log),
            "users": int(raw.shape[0]),
            "items": n,
            "warm_items": n_warm,
            "cold_items": n_cold,
            "interactions": int(raw.nnz),
        },
    )
