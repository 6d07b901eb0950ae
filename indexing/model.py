"""A trained model: everything the served scoring needs, on one item table.

`train_model` turns an event log (and optionally the catalog) into a `TrainedModel`:
ALS item factors, item-item weights (cosine KNN, BM25 KNN, EASE or RP3beta), recent
popularity and cold-start vectors. Item
rows are the warm items (with interactions) in first-seen order, then cold items (catalog
items without interactions but with a category or brand) sorted by id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from indexing.attributes import AttributeMeans
from indexing.baselines import popularity
from indexing.blend import POPULARITY_SCALES, Blend, BlendWeights, PopularityScale
from indexing.categories import (
    PEERS_PER_ITEM,
    category_codes,
    category_peers,
    with_category_peers,
)
from indexing.errors import EmptyDataError, InputError
from indexing.events import EventLog
from indexing.factors import AlsParams, FoldIn, train_als
from indexing.history import ACCUMULATED_HALF_LIVES, served_history_events
from indexing.item_item import ITEM_ITEM_KINDS, ItemItemParams, item_item
from indexing.items import Item
from indexing.matrix import SECONDS_PER_DAY, Weighting, interaction_matrix

__all__ = [
    "ModelParams",
    "TrainedModel",
    "category_peers_of",
    "cold_start_vectors",
    "read_model_params",
    "recent_popularity",
    "train_model",
    "warm_columns",
]


@dataclass(frozen=True)
class ModelParams:
    """Every hyperparameter of the served model (defaults: what `pushrec eval` chose on
    Online Retail's validation splits, docs/indexing.md)."""

    als: AlsParams = field(default_factory=lambda: AlsParams(factors=64))
    weighting: Weighting = field(default_factory=Weighting)
    #: None or `history.STATE_HALF_LIFE_DAYS` when `history_events` is None (the state
    #: keeps sums that serve those two exactly; `__post_init__` refuses others)
    history_half_life_days: float | None = 90.0
    #: the items of the shopper's history the model reads, most recently touched first;
    #: with the accumulated history also its bound (the worker's `history_items_max`)
    history_items: int = 200
    #: None: the shopper's whole history, as the worker accumulates it per item
    #: (`indexing.history`); a number: only their latest events, as many, from the
    #: worker's recent list (versions built before the accumulated state)
    history_events: int | None = None
    item_item: ItemItemParams = field(
        default_factory=lambda: ItemItemParams("ease", top_m=200, l2=400.0)
    )
    recent_days: float = 7.0
    #: how the recent buyers become the popularity term (`blend.popularity_term`); the
    #: tuning chose linear on all three shops of docs/indexing.md
    popularity_scale: PopularityScale = "linear"
    blend: BlendWeights = field(default_factory=lambda: BlendWeights(mf=1.0, knn=0.5, pop=1.0))
    #: how strongly the catalogue's category peers join the item-item weights
    #: (`indexing.categories`); 0: not at all, as without a catalogue
    category_strength: float = 0.0

    def __post_init__(self) -> None:
        if self.history_events is None and (
            self.history_half_life_days not in ACCUMULATED_HALF_LIVES
        ):
            raise ValueError(
                f"history_half_life_days must be one of {ACCUMULATED_HALF_LIVES} (what the "
                f"accumulated shopper state can serve), not {self.history_half_life_days}"
            )
        if self.history_items < 1:
            raise ValueError("history_items must be at least 1")
        if self.popularity_scale not in POPULARITY_SCALES:
            raise ValueError(f"popularity_scale must be one of {POPULARITY_SCALES}")

    @property
    def history_weighting(self) -> Weighting:
        return Weighting(self.weighting.type_weights, self.history_half_life_days)

    def as_dict(self) -> dict[str, object]:
        return {
            "als": self.als.as_dict(),
            "weighting": self.weighting.as_dict(),
            "history_half_life_days": self.history_half_life_days,
            "history_items": self.history_items,
            "history_events": self.history_events,
            "item_item": self.item_item.as_dict(),
            "recent_days": self.recent_days,
            "popularity_scale": self.popularity_scale,
            "blend": self.blend.as_dict(),
            "category_strength": self.category_strength,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ModelParams:
        """Inverse of `as_dict` (also of versions that had cosine KNN only, `knn_top_m`);
        raises TypeError / ValueError / KeyError when malformed."""
        defaults = cls()
        als = data["als"]
        weighting = data["weighting"]
        blend = data["blend"]
        if not (isinstance(als, dict) and isinstance(weighting, dict) and isinstance(blend, dict)):
            raise TypeError("params.als, params.weighting and params.blend must be objects")
        item_item = data.get("item_item")
        if item_item is None:
            item_item = {"kind": "cosine", "top_m": int(str(data.get("knn_top_m", 20)))}
        if not isinstance(item_item, dict):
            raise TypeError("params.item_item must be an object")
        if item_item.get("kind") not in ITEM_ITEM_KINDS:
            raise ValueError(f"params.item_item.kind must be one of {ITEM_ITEM_KINDS}")
        return cls(
            als=AlsParams(**als),
            weighting=Weighting(**weighting),
            history_half_life_days=_opt_float(data.get("history_half_life_days")),
            history_items=int(str(data.get("history_items", defaults.history_items))),
            history_events=served_history_events(data),
            item_item=ItemItemParams(**item_item),
            recent_days=float(str(data.get("recent_days", defaults.recent_days))),
            # versions before the scale was tuned used the log scale
            popularity_scale=cast(PopularityScale, data.get("popularity_scale", "log")),
            blend=BlendWeights(**blend),
            category_strength=float(str(data.get("category_strength", 0.0))),
        )


def read_model_params(path: Path) -> ModelParams:
    """The parameters in the JSON file `path`: the output of `pushrec eval --json` (its
    `params`) or the parameters alone. Raises `InputError` naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ModelParams.from_dict(data.get("params", data))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InputError(f"model parameters {path}: {exc!r}") from exc


def _opt_float(value: object) -> float | None:
    return None if value is None else float(str(value))


@dataclass(frozen=True)
class TrainedModel:
    """The served model on one item table.

    item_ids: (n,) ids of rows; factors: float32 (n, d) raw ALS factors (cold rows: the
    attribute mean); cold: bool (n,); similarity: CSR float32 (n, n) top-M item-item weights
    (cold rows empty); recent_popularity: float32 (n,) distinct users in the last `recent_days`.
    """

    item_ids: tuple[str, ...]
    factors: npt.NDArray[np.float32]
    cold: npt.NDArray[np.bool_]
    similarity: sp.csr_matrix
    recent_popularity: npt.NDArray[np.float32]
    params: ModelParams
    counts: dict[str, int]

    def rows_of(
        self, item_ids: Sequence[str]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.intp]]:
        """(code of each row in `item_ids`, int64 (n_rows,); row of each code, intp
        (len(item_ids),), -1 where the model has no row): the model's rows on the table
        of a log whose ids are `item_ids` (every row's id must be there)."""
        code_of = {item_id: code for code, item_id in enumerate(item_ids)}
        row_code = np.array([code_of[i] for i in self.item_ids], dtype=np.int64)
        row_of = np.full(len(item_ids), -1, dtype=np.intp)
        row_of[row_code] = np.arange(row_code.shape[0])
        return row_code, row_of

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
            self.params.popularity_scale,
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
    means = AttributeMeans.of(warm_ids, factors, np.ones(len(warm_ids), dtype=bool), catalog)
    warm = set(warm_ids)
    ids: list[str] = []
    vecs: list[npt.NDArray[np.float32]] = []
    for item_id in sorted(set(catalog) - warm):
        item = catalog[item_id]
        vector = means.vector(item.category or "", item.brand or "")
        if vector is None:
            continue
        ids.append(item_id)
        vecs.append(vector)
    d = factors.shape[1]
    return ids, np.array(vecs, dtype=np.float32).reshape(len(ids), d)


def warm_columns(log: EventLog, weighting: Weighting, as_of: float) -> npt.NDArray[np.intp]:
    """Int (n_warm,): item codes of `log` with a positive interaction weight, ascending:
    the model's warm rows, in order. The set does not depend on the half-life."""
    return _positive_columns(interaction_matrix(log, weighting, as_of=as_of))


def _positive_columns(raw: sp.csr_matrix) -> npt.NDArray[np.intp]:
    return np.flatnonzero(np.diff(sp.csc_matrix(raw).indptr) > 0).astype(np.intp)


def recent_popularity(
    log: EventLog, warm_cols: npt.NDArray[np.intp], since: float
) -> npt.NDArray[np.float32]:
    """Float32 (len(warm_cols),): distinct shoppers per warm item among events >= `since`."""
    remap = np.full(len(log.item_ids), -1, dtype=np.int64)
    remap[warm_cols] = np.arange(warm_cols.shape[0])
    keep = remap[log.items] >= 0
    return popularity(
        log.users[keep],
        remap[log.items[keep]].astype(np.int32),
        log.ts[keep],
        warm_cols.shape[0],
        since=since,
    )


def category_peers_of(
    log: EventLog, cols: npt.NDArray[np.intp], catalog: Mapping[str, Item]
) -> sp.csr_matrix:
    """`category_peers` over the item codes `cols` of `log` (its rows in that order), by
    distinct buyers of all time: what `train_model` adds to the item-item weights."""
    codes = category_codes([log.item_ids[c] for c in cols.tolist()], catalog)
    return category_peers(codes, recent_popularity(log, cols, -np.inf), PEERS_PER_ITEM)


def train_model(
    log: EventLog,
    params: ModelParams,
    *,
    catalog: Mapping[str, Item] | None = None,
    as_of: float | None = None,
    similarity: sp.csr_matrix | None = None,
) -> TrainedModel:
    """Train the served model on `log` as seen at `as_of` (default: its last event).

    similarity: `item_item(warm pattern, params.item_item)` when already computed (tuning
    shares it across settings: it depends only on which cells are positive, not on the
    half-life); the catalogue's category peers are added to it at
    `params.category_strength`. Raises `EmptyDataError` when no item has a positive weight.
    """
    as_of = float(log.ts.max()) if as_of is None else as_of
    raw = interaction_matrix(log, params.weighting, as_of=as_of)
    warm_cols = _positive_columns(raw)
    if warm_cols.size == 0:
        raise EmptyDataError("no item has a positive interaction weight")
    raw = sp.csr_matrix(raw[:, warm_cols])
    factors = train_als(raw, params.als)
    warm_ids = tuple(log.item_ids[c] for c in warm_cols.tolist())
    cold_ids, cold_vecs = cold_start_vectors(factors.items, warm_ids, catalog or {})
    n_warm, n_cold = len(warm_ids), len(cold_ids)
    n = n_warm + n_cold
    sim = item_item(raw, params.item_item) if similarity is None else similarity
    if params.category_strength > 0 and catalog:
        peers = category_peers_of(log, warm_cols, catalog)
        sim = with_category_peers(sim, peers, params.category_strength)
    sim = sp.csr_matrix(
        (sim.data, sim.indices, np.concatenate([sim.indptr, np.full(n_cold, sim.indptr[-1])])),
        shape=(n, n),
    )
    pop_warm = recent_popularity(log, warm_cols, as_of - params.recent_days * SECONDS_PER_DAY)
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
