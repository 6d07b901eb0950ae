"""How `Blend.score_many` adds a normalised term: as `Blend.score` does, row by row."""

from __future__ import annotations

import numpy as np

from indexing.blend import _add_normalised

TERM = np.array([[1.0, 2.0, 0.0, 4.0], [-1.0, -2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])


def test_a_term_adds_only_its_rows_whose_top_is_above_zero() -> None:
    """`score` adds a term scaled by its top only when the top is above 0: a row of
    negative scores (a negative event-type weight) adds nothing, not itself."""
    total = np.zeros((3, 4))
    _add_normalised(total, [0, 1, 2], TERM.copy(), TERM.max(axis=1, keepdims=True), 0.5)
    assert total.tolist() == [[0.125, 0.25, 0.0, 0.5], [0.0] * 4, [0.0] * 4]


def test_only_the_live_rows_of_the_total_are_added_to() -> None:
    total = np.ones((4, 4))
    _add_normalised(total, [0, 2, 3], TERM.copy(), TERM.max(axis=1, keepdims=True), 1.0)
    assert total.tolist() == [[1.25, 1.5, 1.0, 2.0], [1.0] * 4, [1.0] * 4, [1.0] * 4]
