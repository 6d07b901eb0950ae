"""The k largest entries of a score vector, ties at the cut to the lower index.

`np.argpartition` alone keeps an arbitrary subset of the entries tied at the k-th value;
every ranking here (the evaluation's `top_k`, the served `recommend`, top-M item-item
lists) must be reproducible and agree with each other, so ties go to the lower index.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["top_indices"]


def top_indices(values: npt.NDArray[np.floating], k: int) -> npt.NDArray[np.intp]:
    """Int (min(k, n),): positions of the k largest of `values` (1-D), best first, ties
    (at the cut and in the order) to the lower position."""
    m = min(k, values.shape[0])
    if m <= 0:
        return np.empty(0, dtype=np.intp)
    threshold = values[np.argpartition(-values, m - 1)[m - 1]]
    above = np.flatnonzero(values > threshold)
    tied = np.flatnonzero(values == threshold)[: m - above.shape[0]]
    chosen = np.concatenate([above, tied])
    return chosen[np.lexsort((chosen, -values[chosen]))].astype(np.intp)
