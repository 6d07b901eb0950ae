"""Metric invariants on random rankings (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from indexing import evaluate_rankings

users = st.integers(min_value=0, max_value=20)
items = st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=30, unique=True)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(users, st.tuples(items, items), min_size=1, max_size=10))
def test_metrics_are_bounded_and_monotone_in_k(
    cases: dict[int, tuple[list[int], list[int]]],
) -> None:
    truth = {u: np.array(sorted(t)) for u, (t, _) in cases.items()}
    rankings = {u: r for u, (_, r) in cases.items()}
    m = evaluate_rankings(rankings, truth, n_catalog=41, ks=(5, 10))
    for k in (5, 10):
        for name in ("recall", "ndcg", "hr", "coverage"):
            assert 0.0 <= m[f"{name}@{k}"] <= 1.0 + 1e-12
        assert m[f"recall@{k}"] <= m[f"hr@{k}"] + 1e-12
    assert m["hr@5"] <= m["hr@10"] + 1e-12
    assert m["coverage@5"] <= m["coverage@10"] + 1e-12


@given(st.dictionaries(users, items, min_size=1, max_size=10))
def test_perfect_rankings_score_one(truth_lists: dict[int, list[int]]) -> None:
    truth = {u: np.array(sorted(t)) for u, t in truth_lists.items()}
    rankings = {u: sorted(t) for u, t in truth_lists.items()}
    m = evaluate_rankings(rankings, truth, n_catalog=41, ks=(10,))
    assert m["recall@10"] == 1.0 and m["ndcg@10"] == 1.0 and m["hr@10"] == 1.0
