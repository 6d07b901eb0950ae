"""Attribute vectors for items the model has no interactions for: `AttributeMeans`.

An item without interactions gets the mean raw ALS factor of the warm items of its
category, else of its brand (`indexing.model.cold_start_vectors` applies it at build time
through this class). The means are computed once per build and stored in the artifact, so a
worker can give an item added after the build the vector the build would have given it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from indexing.items import Item

__all__ = ["ATTRIBUTE_ARRAYS", "AttributeMeans"]

#: The artifact arrays of `AttributeMeans.arrays` (absent from artifacts written before).
ATTRIBUTE_ARRAYS = ("category_names", "category_means", "brand_names", "brand_means")


@dataclass(frozen=True)
class AttributeMeans:
    """Per category and per brand: the mean raw factor (float32 (d,)) of its warm items."""

    categories: Mapping[str, npt.NDArray[np.float32]]
    brands: Mapping[str, npt.NDArray[np.float32]]

    def vector(self, category: str = "", brand: str = "") -> npt.NDArray[np.float32] | None:
        """The raw factor for an item of `category` / `brand` (empty: unknown): its
        category's mean, else its brand's; None when neither has a warm item."""
        if category and category in self.categories:
            return self.categories[category]
        if brand and brand in self.brands:
            return self.brands[brand]
        return None

    @classmethod
    def of(
        cls,
        item_ids: Sequence[str],
        factors: npt.NDArray[np.float32],
        warm: npt.NDArray[np.bool_],
        catalog: Mapping[str, Item],
    ) -> AttributeMeans:
        """The means over the rows of `factors` flagged `warm`, by each row's catalog entry."""
        by_cat: dict[str, list[int]] = defaultdict(list)
        by_brand: dict[str, list[int]] = defaultdict(list)
        for row in np.flatnonzero(warm).tolist():
            item = catalog.get(item_ids[row])
            if item is None:
                continue
            if item.category:
                by_cat[item.category].append(row)
            if item.brand:
                by_brand[item.brand].append(row)

        def means(groups: dict[str, list[int]]) -> dict[str, npt.NDArray[np.float32]]:
            return {g: factors[rows].mean(axis=0).astype(np.float32) for g, rows in groups.items()}

        return cls(means(by_cat), means(by_brand))

    def arrays(self, dim: int) -> dict[str, npt.NDArray[Any]]:
        """The artifact arrays (`ATTRIBUTE_ARRAYS`): names <U (g,) and means float32 (g, d)."""
        out: dict[str, npt.NDArray[Any]] = {}
        for kind, groups in (("category", self.categories), ("brand", self.brands)):
            names = sorted(groups)
            out[f"{kind}_names"] = np.array(names, dtype=str)
            means = np.array([groups[n] for n in names], dtype=np.float32)
            out[f"{kind}_means"] = means.reshape(len(names), dim)
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.NDArray[Any]], dim: int) -> AttributeMeans:
        """Inverse of `arrays`; raises ValueError when names and means disagree in shape."""
        groups: list[dict[str, npt.NDArray[np.float32]]] = []
        for kind in ("category", "brand"):
            names = arrays[f"{kind}_names"]
            means = np.asarray(arrays[f"{kind}_means"], dtype=np.float32)
            if names.ndim != 1 or means.shape != (names.shape[0], dim):
                raise ValueError(
                    f"{kind}: {names.shape[0]} names, means of shape {means.shape} (d = {dim})"
                )
            groups.append(dict(zip(names.tolist(), means, strict=True)))
        return cls(groups[0], groups[1])
