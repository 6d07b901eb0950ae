"""`top_indices`: the k largest, best first, ties to the lower position, on every path."""

from __future__ import annotations

import numpy as np
import pytest

from indexing import ranking
from indexing.ranking import top_indices


def _reference(values: np.ndarray, k: int) -> np.ndarray:
    """A full stable ranking (NaN-free values)."""
    return np.lexsort((np.arange(values.shape[0]), -values))[:k]


@pytest.mark.parametrize("seed", range(40))
def test_equals_a_full_stable_ranking_with_ties_and_minus_infinity(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 6000))
    values = [
        rng.integers(0, 4, n).astype(np.float64),  # ties everywhere, at the cut too
        rng.random(n),
        np.sort(rng.random(n)),  # the best together at the end
        np.where(rng.random(n) < 0.3, -np.inf, rng.random(n)),  # banned rows
    ][seed % 4]
    for k in (1, 3, 40, 200, n):
        assert top_indices(values, k).tolist() == _reference(values, k).tolist()


def test_a_floor_above_the_kth_largest_ranks_the_whole_vector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ranked: list[int] = []
    whole = ranking._ranked
    monkeypatch.setattr(ranking, "_ranked", lambda v, m: ranked.append(len(v)) or whole(v, m))
    values = np.zeros(4000)
    values[::8] = np.arange(1, 501)  # the sample sees only these: 14 pass its floor
    values[5] = 470.5  # unsampled, below the floor (487), 31st of all
    got = top_indices(values, 40)
    assert ranked == [4000]
    assert got.tolist() == _reference(values, 40).tolist()
    assert 5 in got.tolist()
    ranked.clear()
    top_indices(np.random.default_rng(1).random(4000), 40)
    assert ranked and ranked[0] < 200  # the common case ranks what passed


def test_nan_is_never_ranked_while_k_numbers_are_left() -> None:
    rng = np.random.default_rng(7)
    values = rng.random(5000)
    values[rng.integers(0, 5000, 900)] = np.nan
    got = top_indices(values, 50)
    assert not np.isnan(values[got]).any()
    clean = np.where(np.isnan(values), -np.inf, values)
    assert got.tolist() == _reference(clean, 50).tolist()


def test_a_few_nan_under_a_numeric_floor_are_left_out() -> None:
    rng = np.random.default_rng(8)
    values = rng.random(5000)
    values[[3, 700, 4097]] = np.nan  # none sampled (every 8th): the floor is a number
    got = top_indices(values, 40)
    clean = np.where(np.isnan(values), -np.inf, values)
    assert got.tolist() == _reference(clean, 40).tolist()


def test_nothing_for_k_zero_or_an_empty_vector() -> None:
    assert top_indices(np.arange(5.0), 0).tolist() == []
    assert top_indices(np.empty(0), 3).tolist() == []
