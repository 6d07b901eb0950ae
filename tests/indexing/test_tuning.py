"""Tuning: the bulk scorer agrees with the served ranking, and the search can switch a
signal off where it does not help."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from indexing import (
    BlendWeights,
    ModelParams,
    discovery_task,
    evaluate_models,
    evaluate_rankings,
    read_events,
    train_model,
)
from indexing.blend import POPULARITY_SCALES, popularity_term
from indexing.blend_search import BlendCase, blend_recalls
from indexing.experiment import served_rankings
from indexing.factors import AlsParams
from indexing.history import model_histories
from indexing.item_item import ItemItemParams
from indexing.tuning import TuneGrid, tune
from tests.indexing.conftest import DAY, T0, planted_rows

SMALL_GRID = TuneGrid(
    factors=(8,),
    regularization=(0.1,),
    alpha=(1.0, 4.0),
    iterations=8,
    recent_days=(3.0, 30.0),
    top_m=(5, 10),
    rp3_alpha=(1.0,),
    rp3_beta=(0.5,),
    ease_l2=(10.0,),
    matrix_half_life_days=(None,),
    history_half_life_days=(None,),
    als_finalists=1,
)


@pytest.mark.parametrize("kind", ["cosine", "ease", "rp3beta"])
def test_bulk_scoring_agrees_with_the_served_ranking(kind: str) -> None:
    log, _ = read_events(planted_rows(per_user=8))
    task = discovery_task(log)
    params = ModelParams(
        als=AlsParams(factors=8, iterations=10),
        item_item=ItemItemParams(kind, 10),  # type: ignore[arg-type]
    )
    model = train_model(task.train, params, as_of=task.split_ts)
    (histories,) = model_histories(
        task.train,
        task.split_ts,
        [params.history_weighting],
        params.history_items,
        params.history_events,
    )
    weights = [
        BlendWeights(1.0, 0.3, 1.0),
        BlendWeights(1.0, 0.0, 0.0),
        BlendWeights(0.0, 1.0, 0.1),
        BlendWeights(0.0, 0.0, 1.0),
    ]
    pops = {params.recent_days: model.recent_popularity}
    bulk = blend_recalls(
        task, model, histories, pops, weights, task.users, scales=POPULARITY_SCALES, pool=1_000
    )
    n_warm = int(task.warm.sum())
    for scale, bw in itertools.product(POPULARITY_SCALES, weights):
        scaled = replace(model, params=replace(params, popularity_scale=scale))
        served = served_rankings(task, scaled, blend=bw)
        expected = evaluate_rankings(served, task.truth, n_warm, (10,))["recall@10"]
        case = BlendCase(params.recent_days, bw, scale)
        assert bulk[case] == pytest.approx(expected, abs=1e-12)


def test_bulk_fold_in_equals_one_shopper_at_a_time() -> None:
    log, _ = read_events(planted_rows())
    model = train_model(log, ModelParams(als=AlsParams(factors=8, iterations=5)))
    fold_in = model.blend().fold_in
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(model.item_ids), size=(6, 5))
    weights = rng.uniform(0.0, 4.0, size=(6, 5))
    weights[0] = 0.0  # nothing known: zeros
    weights[1, 2:] = 0.0  # padding
    weights[2, 1] = -1.0  # a non-positive weight is ignored
    bulk = fold_in.batch(rows, weights)
    for r in range(6):
        assert np.allclose(bulk[r], fold_in(rows[r], weights[r]), atol=1e-5)
    assert not bulk[0].any()


def _popularity_shop() -> list[dict[str, str]]:
    """Every shopper buys a few random items, then one of the week's two best sellers:
    personal history says nothing about the next purchase, popularity says everything."""
    rng = np.random.default_rng(3)
    rows: list[dict[str, str]] = []
    n = 0
    for u in range(400):
        start = float(rng.uniform(0, 90))
        for k in range(4):
            n += 1
            item = int(rng.integers(0, 300))
            rows.append(_row(n, u, f"i{item}", T0 + (start + k) * DAY))
        for k in range(2):
            n += 1
            day = start + 5 + k
            week = int(day // 7)
            hit = f"hit{week}-{int(rng.integers(0, 2))}"
            rows.append(_row(n, u, hit, T0 + day * DAY))
    return rows


def _row(n: int, user: int, item: str, ts: float) -> dict[str, str]:
    return {
        "event_id": f"e{n}",
        "user_id": f"u{user}",
        "item_id": item,
        "type": "purchase",
        "ts": str(ts),
        "quantity": "1",
        "price": "",
    }


def test_where_only_popularity_helps_the_tuning_finds_it() -> None:
    log, _ = read_events(_popularity_shop())
    task = discovery_task(log)
    params, baselines, report = tune(task.train, SMALL_GRID)
    assert (params.blend.mf, params.blend.knn) == (0.0, 0.0) and params.blend.pop > 0
    # popularity alone is one of the settings searched: the chosen blend is no worse
    # on validation than the best popularity window
    best_pop = max(report["popularity_recent"].values())  # type: ignore[attr-defined]
    assert report["chosen_model_validation_recall_at_10"] >= best_pop
    result = evaluate_models(log, params, baselines)
    served = result.metrics["served_blend"]["recall@10"]
    name, best = result.best_baseline()
    assert name.startswith("popularity_recent") and best > 0.2
    assert served >= 0.9 * best


def test_bulk_recall_of_a_baseline_equals_the_evaluation_of_its_ranking() -> None:
    """Popularity with many ties, an item-item model and EASE: the bulk count equals
    `evaluate_rankings` over `rank_all`'s lists (ties to the lower item in both)."""
    from indexing.baselines import EaseRanker, ItemItemRanker, PopularityRanker, popularity
    from indexing.blend_search import ranker_recall
    from indexing.experiment import rank_all
    from indexing.item_item import ease_weights, item_item
    from indexing.matrix import Weighting, interaction_matrix

    log, _ = read_events(planted_rows(per_user=8))
    task = discovery_task(log)
    tr, n = task.train, len(log.item_ids)
    raw = interaction_matrix(tr, Weighting(), as_of=task.split_ts)
    counts = popularity(tr.users, tr.items, tr.ts, n)
    rankers = [
        PopularityRanker(np.minimum(counts, 3.0)),  # capped: most items tie
        ItemItemRanker(raw, item_item(raw, ItemItemParams("rp3beta", 5))),
        EaseRanker(raw, ease_weights(raw, 5.0)),
    ]
    n_warm = int(task.warm.sum())
    for ranker in rankers:
        expected = evaluate_rankings(rank_all(ranker, task, 10), task.truth, n_warm, (10,))
        assert ranker_recall(task, ranker) == pytest.approx(expected["recall@10"], abs=1e-12)


def test_a_log_too_small_for_validation_is_a_clear_error() -> None:
    from indexing import EmptyDataError

    # every shopper rebuys one item: no split has a shopper with a new purchase
    rows = [_row(n, n % 3, f"i{n % 3}", T0 + n * DAY) for n in range(12)]
    log, _ = read_events(rows)
    with pytest.raises(EmptyDataError, match="validation"):
        tune(log, SMALL_GRID)


def test_popularity_scales_log_as_before_and_linear_keeps_the_head() -> None:
    counts = np.array([0.0, 1.0, 9.0, 99.0], dtype=np.float32)
    log_term = popularity_term(counts, "log")
    expected = (np.log1p(counts.astype(np.float64)) / float(np.log1p(counts.max()))).astype(
        np.float32
    )
    assert log_term.tolist() == expected.tolist()  # the term of every version before
    assert popularity_term(counts, "linear").tolist() == pytest.approx([0, 1 / 99, 9 / 99, 1])
    # the log flattens the head: the 99-buyer item is 2x the 9-buyer one, not 11x
    assert log_term[3] / log_term[2] == pytest.approx(2.0, rel=1e-6)
    assert popularity_term(np.zeros(3, np.float32), "linear").tolist() == [0, 0, 0]
    assert popularity_term(np.zeros(0, np.float32), "log").shape == (0,)


def test_popularity_scale_is_kept_in_params_and_old_params_read_as_log() -> None:
    params = ModelParams(popularity_scale="linear")
    assert ModelParams.from_dict(params.as_dict()).popularity_scale == "linear"
    legacy = {k: v for k, v in params.as_dict().items() if k != "popularity_scale"}
    assert ModelParams.from_dict(legacy).popularity_scale == "log"
    with pytest.raises(ValueError, match="popularity_scale"):
        ModelParams.from_dict({**params.as_dict(), "popularity_scale": "sqrt"})
