"""Hyperparameter search on a validation split inside the train period (never the test
period): every baseline's own knobs, then the served blend.

`tune(log)` returns the served model's `ModelParams`, the baselines' `BaselineParams` and
a report of everything it scored. Steps, each on the same validation split:

1. Baselines, each over its own grid: the recent-popularity window; item-item models
   (cosine and BM25 KNN over M, RP3beta over alpha, beta and M, EASE over λ), each scored as a
   ranker; plain ALS over factors x regularisation x alpha.
2. The served blend. Its signals come from the best ALS settings (`als_finalists`), two
   matrix half-lives, the best item-item models of the best `blend_kinds` kinds, and two
   history half-lives; every combination is a *signal set*, and each signal set is scored
   under every blend weighting and popularity window at once (`indexing.blend_search`).
   Weights run over ratios down to zero for each signal, so a shop where one signal is
   useless (MF on a grocery shop where popularity dominates) can switch it off.
3. Successive halving over signal sets: all of them on a `screen_share` sample of the
   validation shoppers, the best `finalists` on all of them.

Cost is dominated by ALS training and the bulk scoring; neither grows with the grid of
blend weights. See docs/indexing.md for wall times.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from indexing.baselines import (
    AlsRanker,
    EaseRanker,
    ItemItemRanker,
    PopularityRanker,
    Ranker,
    popularity,
)
from indexing.blend import BlendWeights, shopper_histories
from indexing.blend_search import BlendCase, blend_recalls
from indexing.evaluate import DiscoveryTask, discovery_task, evaluate_rankings
from indexing.events import EventLog
from indexing.experiment import BaselineParams, rank_all
from indexing.factors import AlsParams, train_als
from indexing.item_item import (
    ITEM_ITEM_KINDS,
    ItemItemParams,
    ease_weights,
    item_item,
    truncate_rows,
)
from indexing.matrix import Weighting, interaction_matrix
from indexing.model import ModelParams, recent_popularity, train_model, warm_columns

__all__ = ["TuneGrid", "default_blend_weights", "tune"]

_DAY = 86_400.0
_RATIOS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


def default_blend_weights() -> tuple[BlendWeights, ...]:
    """Every weighting up to scale: MF at 1 with KNN and popularity at each ratio, then
    without MF (KNN at 1, popularity at each ratio; popularity alone)."""
    with_mf = [BlendWeights(1.0, k, p) for k in _RATIOS for p in _RATIOS]
    without = [BlendWeights(0.0, 1.0, p) for p in _RATIOS] + [BlendWeights(0.0, 0.0, 1.0)]
    return tuple(with_mf + without)


@dataclass(frozen=True)
class TuneGrid:
    """The values tried on the validation split."""

    factors: Sequence[int] = (32, 64, 128)
    regularization: Sequence[float] = (0.05, 0.5)
    alpha: Sequence[float] = (1.0, 2.0, 5.0)
    iterations: int = 15
    recent_days: Sequence[float] = (1.0, 3.0, 7.0, 14.0, 30.0)
    top_m: Sequence[int] = (20, 50, 100, 200)
    rp3_alpha: Sequence[float] = (0.5, 1.0)
    rp3_beta: Sequence[float] = (0.0, 0.3, 0.5, 0.7)
    ease_l2: Sequence[float] = (100.0, 400.0, 1600.0, 6400.0)
    ease_max_items: int = 8_192
    matrix_half_life_days: Sequence[float | None] = (None, 60.0)
    history_half_life_days: Sequence[float | None] = (None, 90.0)
    blend_windows: int = 3
    blend_weights: Sequence[BlendWeights] = field(default_factory=default_blend_weights)
    als_finalists: int = 2
    blend_kinds: int = 2
    blend_top_m_max: int = 200
    screen_share: float = 0.25
    screen_min_users: int = 2_000
    finalists: int = 4


def tune(
    log: EventLog,
    grid: TuneGrid = TuneGrid(),
    *,
    seed: int = 0,
) -> tuple[ModelParams, BaselineParams, dict[str, object]]:
    """Choose hyperparameters on the validation split of `log` (pass the train period).

    Returns (model params, baseline params, a report of the search with its timings).
    """
    started = time.perf_counter()
    task = discovery_task(log)
    tr = task.train
    n_warm = int(task.warm.sum())
    timings: dict[str, float] = {}

    def recall(ranker: Ranker) -> float:
        ranked = rank_all(ranker, task, 10)
        return evaluate_rankings(ranked, task.truth, n_warm, (10,))["recall@10"]

    raw = interaction_matrix(tr, Weighting(), as_of=task.split_ts)
    n_items = raw.shape[1]
    pop_scores = {
        d: recall(
            PopularityRanker(
                popularity(tr.users, tr.items, tr.ts, n_items, since=task.split_ts - d * _DAY)
            )
        )
        for d in grid.recent_days
    }
    timings["popularity"] = time.perf_counter() - started
    item_scores = _item_item_scores(raw, grid, recall, timings)
    mark = time.perf_counter()
    als_scores: dict[AlsParams, float] = {}
    for f, reg, a in itertools.product(grid.factors, grid.regularization, grid.alpha):
        p = AlsParams(factors=f, regularization=reg, alpha=a, iterations=grid.iterations, seed=seed)
        als_scores[p] = recall(AlsRanker(train_als(raw, replace(p, num_threads=0))))
    timings["als"] = time.perf_counter() - mark
    best_days = max(pop_scores, key=lambda d: pop_scores[d])
    best_by_kind = {
        kind: max((p for p in item_scores if p.kind == kind), key=lambda p: item_scores[p])
        for kind in ITEM_ITEM_KINDS
        if any(p.kind == kind for p in item_scores)
    }
    ranked_als = sorted(als_scores, key=lambda p: -als_scores[p])
    baselines = BaselineParams(
        recent_days=best_days, item_item=tuple(best_by_kind.values()), als=ranked_als[0]
    )
    mark = time.perf_counter()
    windows = sorted(pop_scores, key=lambda d: -pop_scores[d])[: grid.blend_windows]
    kinds = sorted(best_by_kind.values(), key=lambda p: -item_scores[p])[: grid.blend_kinds]
    chosen, blend_report = _search_blend(
        task, grid, ranked_als[: grid.als_finalists], kinds, windows, seed
    )
    timings["blend"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started
    report: dict[str, object] = {
        "validation_split_ts": task.split_ts,
        "validation_users": len(task.truth),
        "popularity_recent": {str(k): v for k, v in pop_scores.items()},
        "item_item": [{**p.as_dict(), "recall@10": s} for p, s in item_scores.items()],
        "als": [{**p.as_dict(), "recall@10": s} for p, s in als_scores.items()],
        **blend_report,
        "chosen_baselines": baselines.as_dict(),
        "seconds": timings,
    }
    return chosen, baselines, report


def _item_item_scores(
    raw: sp.csr_matrix,
    grid: TuneGrid,
    recall: Callable[[Ranker], float],
    timings: dict[str, float],
) -> dict[ItemItemParams, float]:
    """Validation recall of every item-item baseline setting (wide top-M computed once
    per kind and knobs, narrower M read from it)."""
    out: dict[ItemItemParams, float] = {}
    widest = max(grid.top_m)
    mark = time.perf_counter()
    families: list[ItemItemParams] = [
        ItemItemParams("cosine", widest),
        ItemItemParams("bm25", widest),
    ] + [
        ItemItemParams("rp3beta", widest, alpha=a, beta=b)
        for a, b in itertools.product(grid.rp3_alpha, grid.rp3_beta)
    ]
    for family in families:
        wide = item_item(raw, family)
        for m in grid.top_m:
            sim = wide if m == widest else truncate_rows(wide, m)
            out[replace(family, top_m=m)] = recall(ItemItemRanker(raw, sim))
        timings[family.kind] = timings.get(family.kind, 0.0) + time.perf_counter() - mark
        mark = time.perf_counter()
    for l2 in grid.ease_l2:
        ease = ease_weights(raw, l2, grid.ease_max_items)
        params = ItemItemParams("ease", widest, l2=l2, ease_max_items=grid.ease_max_items)
        out[params] = recall(EaseRanker(raw, ease))
    timings["ease"] = time.perf_counter() - mark
    return out


@dataclass(frozen=True)
class _SignalSet:
    als: AlsParams
    matrix_half_life: float | None
    item_item: ItemItemParams
    history_half_life: float | None


def _search_blend(
    task: DiscoveryTask,
    grid: TuneGrid,
    als_finalists: Sequence[AlsParams],
    kinds: Sequence[ItemItemParams],
    windows: Sequence[float],
    seed: int,
) -> tuple[ModelParams, dict[str, object]]:
    tr, as_of = task.train, task.split_ts
    warm = warm_columns(tr, Weighting(), as_of)
    pattern = interaction_matrix(tr, Weighting(), as_of=as_of)[:, warm]
    sims = {}
    for p in kinds:
        served = replace(p, top_m=min(p.top_m, grid.blend_top_m_max))
        sims[served] = item_item(pattern, served)
    pops = {d: recent_popularity(tr, warm, as_of - d * _DAY) for d in windows}
    history_items = ModelParams().history_items
    histories = {
        hl: shopper_histories(tr, Weighting(Weighting().type_weights, hl), as_of, history_items)
        for hl in grid.history_half_life_days
    }
    models = {}
    first = next(iter(sims))
    for als, mhl in itertools.product(als_finalists, grid.matrix_half_life_days):
        base = ModelParams(als=als, weighting=Weighting(half_life_days=mhl), item_item=first)
        models[(als, mhl)] = train_model(tr, base, as_of=as_of, similarity=sims[first])
    sets = [
        _SignalSet(als, mhl, p, hhl)
        for (als, mhl), p, hhl in itertools.product(models, sims, grid.history_half_life_days)
    ]

    def score(s: _SignalSet, users: npt.NDArray[np.int64]) -> dict[BlendCase, float]:
        model = models[(s.als, s.matrix_half_life)]
        model = replace(
            model,
            similarity=sims[s.item_item],
            params=replace(model.params, item_item=s.item_item),
        )
        return blend_recalls(
            task, model, histories[s.history_half_life], pops, grid.blend_weights, users
        )

    users = task.users
    rounds: list[dict[str, object]] = []
    finalists = sets
    if users.shape[0] >= grid.screen_min_users and len(sets) > grid.finalists:
        rng = np.random.default_rng(seed)
        sample = np.sort(
            rng.choice(users, size=max(1, int(users.shape[0] * grid.screen_share)), replace=False)
        )
        screened = {s: max(score(s, sample).values()) for s in sets}
        finalists = sorted(sets, key=lambda s: -screened[s])[: grid.finalists]
        rounds.append(
            {
                "users": int(sample.shape[0]),
                "signal_sets": [_set_dict(s, r) for s, r in screened.items()],
            }
        )
    best: tuple[float, _SignalSet, BlendCase] | None = None
    final: list[dict[str, object]] = []
    for s in finalists:
        results = score(s, users)
        case = max(results, key=lambda c: results[c])
        final.append(_set_dict(s, results[case]))
        if best is None or results[case] > best[0]:
            best = (results[case], s, case)
    assert best is not None
    rounds.append({"users": int(users.shape[0]), "signal_sets": final})
    value, s, case = best
    chosen = ModelParams(
        als=s.als,
        weighting=Weighting(half_life_days=s.matrix_half_life),
        history_half_life_days=s.history_half_life,
        history_items=history_items,
        item_item=s.item_item,
        recent_days=case.window,
        blend=case.weights,
    )
    return chosen, {
        "blend_rounds": rounds,
        "blend_cases_per_signal_set": len(pops) * len(grid.blend_weights),
        "chosen_model": chosen.as_dict(),
        "chosen_model_validation_recall_at_10": value,
    }


def _set_dict(s: _SignalSet, recall: float) -> dict[str, object]:
    return {
        "als": s.als.as_dict(),
        "matrix_half_life_days": s.matrix_half_life,
        "item_item": s.item_item.as_dict(),
        "history_half_life_days": s.history_half_life,
        "best_recall@10": recall,
    }
