from __future__ import annotations

import numpy as np
import pytest

from indexing import BuildParams, InputError, build_index
from indexing.build import exact_neighbours, recall_at_k


def test_small_catalog_gets_exact_search(clustered: np.ndarray) -> None:
    _, spec = build_index(clustered, BuildParams(exact_max_items=10_000))
    assert spec.kind == "flat" and spec.recall_at_10 == 1.0 and spec.count == 4000


def test_large_catalog_gets_hnsw_with_measured_recall_above_target(clustered: np.ndarray) -> None:
    params = BuildParams(exact_max_items=1000, target_recall=0.97, recall_queries=300)
    index, spec = build_index(clustered, params)
    assert spec.kind == "hnsw" and spec.ef_search is not None
    assert spec.recall_at_10 >= 0.97
    # independent re-measure on other queries against exact search
    rng = np.random.default_rng(7)
    queries = clustered[rng.choice(4000, 200, replace=False)]
    index.hnsw.efSearch = spec.ef_search
    _, found = index.search(queries, 10)
    assert recall_at_k(found, exact_neighbours(clustered, queries, 10)) >= 0.95


def test_empty_input_is_refused() -> None:
    with pytest.raises(InputError):
        build_index(np.zeros((0, 8), dtype=np.float32))
