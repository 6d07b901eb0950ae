"""One contract, three implementations: numpy exact (the fake), FAISS flat, FAISS HNSW."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from indexing import BuildParams, ExactNeighbours, FaissNeighbours, Neighbours, build_index


def _exact(x: np.ndarray) -> Neighbours:
    return ExactNeighbours(x)


def _flat(x: np.ndarray) -> Neighbours:
    index, spec = build_index(x, BuildParams(exact_max_items=10**6))
    assert spec.kind == "flat"
    return FaissNeighbours(index)


def _hnsw(x: np.ndarray) -> Neighbours:
    index, spec = build_index(x, BuildParams(exact_max_items=0, target_recall=0.99))
    assert spec.kind == "hnsw"
    return FaissNeighbours(index, spec.ef_search)


IMPLS = [_exact, _flat, _hnsw]


@pytest.fixture(params=IMPLS, ids=["exact", "faiss_flat", "faiss_hnsw"])
def make(request: pytest.FixtureRequest) -> Callable[[np.ndarray], Neighbours]:
    fn: Callable[[np.ndarray], Neighbours] = request.param
    return fn


def _grid() -> np.ndarray:
    # 200 unit vectors on a circle in 2-D padded to 8-D: neighbours are known by angle
    angles = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    x = np.zeros((200, 8), dtype=np.float32)
    x[:, 0], x[:, 1] = np.cos(angles), np.sin(angles)
    return x


def test_search_returns_nearest_rows_sorted(make: Callable[[np.ndarray], Neighbours]) -> None:
    x = _grid()
    nb = make(x)
    scores, rows = nb.search(x[[10, 50]], 3)
    assert rows[0, 0] == 10 and set(rows[0, 1:].tolist()) == {9, 11}
    assert rows[1, 0] == 50
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    assert scores.dtype == np.float32 and rows.dtype == np.int64


def test_exclude_is_applied_per_query(make: Callable[[np.ndarray], Neighbours]) -> None:
    x = _grid()
    nb = make(x)
    _, rows = nb.search(x[[10]], 3, exclude={10, 11})
    assert rows[0].tolist()[0] == 9 and 10 not in rows[0] and 11 not in rows[0]
    assert rows.shape == (1, 3)


def test_blocked_rows_vanish_until_unblocked(make: Callable[[np.ndarray], Neighbours]) -> None:
    x = _grid()
    nb = make(x)
    nb.block([10, 9])
    _, rows = nb.search(x[[10]], 2)
    assert not {9, 10} & set(rows[0].tolist())
    nb.unblock([10])
    _, rows = nb.search(x[[10]], 1)
    assert rows[0, 0] == 10


def test_fewer_rows_than_k_are_padded(make: Callable[[np.ndarray], Neighbours]) -> None:
    x = _grid()[:5]
    nb = make(x)
    scores, rows = nb.search(x[[0]], 8, exclude={1})
    assert rows.shape == (1, 8)
    assert sorted(r for r in rows[0].tolist() if r >= 0) == [0, 2, 3, 4]
    assert np.isneginf(scores[0, rows[0] < 0]).all()
