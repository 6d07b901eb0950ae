"""Events -> a users x items confidence matrix (the input of every model).

Each event adds `type_weight * 0.5 ** (age / half_life)` to its (user, item) cell; cells
whose sum is <= 0 are dropped. Models turn the raw sum `r` into ALS confidence
`1 + alpha * log1p(r)` (see `indexing.factors`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from indexing.events import EVENT_TYPES, EventLog

__all__ = [
    "DEFAULT_TYPE_WEIGHTS",
    "SECONDS_PER_DAY",
    "Weighting",
    "event_weights",
    "interaction_matrix",
]

DEFAULT_TYPE_WEIGHTS: Mapping[str, float] = {
    "view": 1.0,
    "search": 0.0,
    "add_to_cart": 3.0,
    "remove_from_cart": 0.0,
    "purchase": 5.0,
    "push_open": 0.5,
    "push_click": 2.0,
}

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class Weighting:
    """How much one event counts: per type, and optionally halved every `half_life_days`."""

    type_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS))
    half_life_days: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {"type_weights": dict(self.type_weights), "half_life_days": self.half_life_days}


def event_weights(log: EventLog, weighting: Weighting, as_of: float) -> npt.NDArray[np.float32]:
    """Float32 (n,): the weight of each event of `log` seen from time `as_of` (epoch s)."""
    per_type = np.array(
        [float(weighting.type_weights.get(name, 0.0)) for name in EVENT_TYPES], dtype=np.float64
    )
    w = per_type[log.types]
    if weighting.half_life_days:
        age_days = np.maximum(as_of - log.ts, 0.0) / SECONDS_PER_DAY
        w = w * np.exp2(-age_days / weighting.half_life_days)
    return w.astype(np.float32)


def interaction_matrix(
    log: EventLog,
    weighting: Weighting,
    *,
    as_of: float | None = None,
    n_users: int | None = None,
    n_items: int | None = None,
) -> sp.csr_matrix:
    """CSR float32 (n_users, n_items) of summed event weights, canonical (sorted, no zeros).

    Rows/columns follow `log.users` / `log.items` codes; `as_of` defaults to the last event.
    """
    n_users = len(log.user_ids) if n_users is None else n_users
    n_items = len(log.item_ids) if n_items is None else n_items
    as_of = float(log.ts.max()) if as_of is None and len(log) else (as_of or 0.0)
    w = event_weights(log, weighting, as_of)
    mat = sp.csr_matrix((w.astype(np.float64), (log.users, log.items)), shape=(n_users, n_items))
    mat.sum_duplicates()
    mat.data[mat.data <= 0] = 0.0
    mat.eliminate_zeros()
    mat.sort_indices()
    return sp.csr_matrix(mat, dtype=np.float32)
