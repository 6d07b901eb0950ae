"""Hyperparameter search on validation splits inside the train period (never the test
period): every baseline's own knobs, then the served blend.

`tune(log)` returns the served model's `ModelParams`, the baselines' `BaselineParams` and
a report of everything it scored. Every setting is scored on two splits of the train
period, at 80% and at 90% of its events (the protocol's split applied to it, and a later
one whose validation period sits right before the test period), and chosen by its mean
recall@10: one split alone let noise and the season of one period decide. Steps:

1. Baselines, each over its own grid: the recent-popularity window; item-item models
   (cosine and BM25 KNN over M, RP3beta over alpha, beta and M, EASE over λ), each scored as a
   ranker; plain ALS over factors x regularisation x alpha.
2. The served blend. Its signals come from the best ALS settings (`als_finalists`), two
   matrix half-lives, the best item-item models of the best `blend_kinds` kinds, and two
   history half-lives; every combination is a *signal set*, and each signal set is scored
   under every blend weighting, popularity window and popularity scale at once
   (`indexing.blend_search`).
   When a catalogue with categories is given, the strength of its category peers is
   chosen first, among `category_strengths`, for each item-item kind on its first
   signal set, and every signal set of that kind then has it.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

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
from indexing.blend import POPULARITY_SCALES, BlendWeights, PopularityScale
from indexing.blend_search import BlendCase, blend_recalls, ranker_recall
from indexing.categories import with_category_peers
from indexing.errors import EmptyDataError
from indexing.evaluate import DiscoveryTask, discovery_task
from indexing.events import EventLog
from indexing.experiment import BaselineParams
from indexing.factors import AlsParams, train_als
from indexing.history import model_histories
from indexing.item_item import (
    EASE_MAX_ITEMS,
    ITEM_ITEM_KINDS,
    ItemItemParams,
    ease_weights,
    item_item,
    truncate_rows,
)
from indexing.items import Item
from indexing.matrix import SECONDS_PER_DAY, Weighting, interaction_matrix
from indexing.model import (
    ModelParams,
    TrainedModel,
    category_peers_of,
    recent_popularity,
    train_model,
    warm_columns,
)

__all__ = ["TuneGrid", "default_blend_weights", "tune"]

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
    rp3_beta: Sequence[float] = (0.3, 0.6)
    ease_l2: Sequence[float] = (100.0, 400.0, 1600.0, 6400.0)
    ease_max_items: int = EASE_MAX_ITEMS
    matrix_half_life_days: Sequence[float | None] = (None, 60.0)
    history_half_life_days: Sequence[float | None] = (None, 90.0)
    category_strengths: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
    validation_fractions: Sequence[float] = (0.8, 0.9)
    blend_windows: int = 3
    popularity_scales: Sequence[PopularityScale] = POPULARITY_SCALES
    blend_weights: Sequence[BlendWeights] = field(default_factory=default_blend_weights)
    als_second_round: int = 6
    ease_second_round: int = 2
    als_finalists: int = 1
    blend_kinds: int = 2
    blend_top_m_max: int = 200
    screen_share: float = 0.25
    screen_min_users: int = 2_000
    finalists: int = 3


@dataclass(frozen=True)
class _Fold:
    """One validation split: where it cuts the train period, the task, its unweighted
    train matrix."""

    fraction: float
    task: DiscoveryTask
    raw: sp.csr_matrix

    def recall(self, ranker: Ranker) -> float:
        return ranker_recall(self.task, ranker)


def tune(
    log: EventLog,
    grid: TuneGrid = TuneGrid(),
    *,
    catalog: Mapping[str, Item] | None = None,
    seed: int = 0,
) -> tuple[ModelParams, BaselineParams, dict[str, object]]:
    """Choose hyperparameters on validation splits of `log` (pass the train period);
    `catalog` gives the items' categories (none: the category peers play no part).

    Every setting is scored on each split of `grid.validation_fractions` and chosen by
    its mean recall@10. Returns (model params, baseline params, a report of the search
    with its timings).
    """
    started = time.perf_counter()
    folds = []
    for fraction in grid.validation_fractions:
        task = discovery_task(log, fraction)
        if task.truth:  # a split without validation shoppers says nothing (a small shop)
            raw = interaction_matrix(task.train, Weighting(), as_of=task.split_ts)
            folds.append(_Fold(fraction, task, raw))
    if not folds:
        raise EmptyDataError("no validation shoppers in any split of the train period")
    timings: dict[str, float] = {}

    def mean(ranker: Callable[[_Fold], Ranker]) -> float:
        return float(np.mean([f.recall(ranker(f)) for f in folds]))

    def recent(days: float) -> Callable[[_Fold], Ranker]:
        def ranker(f: _Fold) -> Ranker:
            tr, since = f.task.train, f.task.split_ts - days * SECONDS_PER_DAY
            return PopularityRanker(
                popularity(tr.users, tr.items, tr.ts, f.raw.shape[1], since=since)
            )

        return ranker

    pop_scores = {d: mean(recent(d)) for d in grid.recent_days}
    timings["popularity"] = time.perf_counter() - started
    item_scores = _item_item_scores(folds, grid, timings)
    mark = time.perf_counter()
    als_grid = [
        AlsParams(factors=f, regularization=reg, alpha=a, iterations=grid.iterations, seed=seed)
        for f, reg, a in itertools.product(grid.factors, grid.regularization, grid.alpha)
    ]

    def als_recall(p: AlsParams, fold: _Fold) -> float:
        return fold.recall(AlsRanker(train_als(fold.raw, replace(p, num_threads=0))))

    first, als_scores = _halving(als_grid, als_recall, folds, grid.als_second_round)
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
        [f.task for f in folds],
        grid,
        ranked_als[: grid.als_finalists],
        kinds,
        windows,
        catalog or {},
        seed,
    )
    timings["blend"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started
    report: dict[str, object] = {
        "validation": [
            {"fraction": f.fraction, "split_ts": f.task.split_ts, "users": len(f.task.truth)}
            for f in folds
        ],
        "popularity_recent": {str(k): v for k, v in pop_scores.items()},
        "item_item": [{**p.as_dict(), "recall@10": s} for p, s in item_scores.items()],
        "als_first_split": [{**p.as_dict(), "recall@10": s} for p, s in first.items()],
        "als": [{**p.as_dict(), "recall@10": s} for p, s in als_scores.items()],
        **blend_report,
        "chosen_baselines": baselines.as_dict(),
        "seconds": timings,
    }
    return chosen, baselines, report


def _item_item_scores(
    folds: Sequence[_Fold], grid: TuneGrid, timings: dict[str, float]
) -> dict[ItemItemParams, float]:
    """Mean validation recall of every item-item baseline setting (a wide top-M computed
    once per fold, kind and knobs; narrower M read from it)."""
    sums: dict[ItemItemParams, float] = {}
    widest = max(grid.top_m)
    families: list[ItemItemParams] = [
        ItemItemParams("cosine", widest),
        ItemItemParams("bm25", widest),
    ] + [
        ItemItemParams("rp3beta", widest, alpha=a, beta=b)
        for a, b in itertools.product(grid.rp3_alpha, grid.rp3_beta)
    ]
    for fold in folds:
        for family in families:
            mark = time.perf_counter()
            wide = item_item(fold.raw, family)
            for m in grid.top_m:
                sim = wide if m == widest else truncate_rows(wide, m)
                key = replace(family, top_m=m)
                sums[key] = sums.get(key, 0.0) + fold.recall(ItemItemRanker(fold.raw, sim))
            timings[family.kind] = timings.get(family.kind, 0.0) + time.perf_counter() - mark
    out = {key: total / len(folds) for key, total in sums.items()}
    mark = time.perf_counter()
    ease_grid = [
        ItemItemParams("ease", widest, l2=l2, ease_max_items=grid.ease_max_items)
        for l2 in grid.ease_l2
    ]

    def ease_recall(p: ItemItemParams, fold: _Fold) -> float:
        return fold.recall(EaseRanker(fold.raw, ease_weights(fold.raw, p.l2, p.ease_max_items)))

    # an EASE setting is a dense inverse: halve over the splits as for ALS
    out.update(_halving(ease_grid, ease_recall, folds, grid.ease_second_round)[1])
    timings["ease"] = time.perf_counter() - mark
    return out


_Setting = TypeVar("_Setting", AlsParams, ItemItemParams)


def _halving(
    settings: Sequence[_Setting],
    recall: Callable[[_Setting, _Fold], float],
    folds: Sequence[_Fold],
    keep: int,
) -> tuple[dict[_Setting, float], dict[_Setting, float]]:
    """Successive halving over splits: every setting on the first split, the best `keep`
    on every split. Returns (first-split recall of each, mean recall of the kept)."""
    first = {p: recall(p, folds[0]) for p in settings}
    kept = sorted(settings, key=lambda p: -first[p])[:keep]
    means = {p: float(np.mean([first[p]] + [recall(p, f) for f in folds[1:]])) for p in kept}
    return first, means


@dataclass(frozen=True)
class _SignalSet:
    als: AlsParams
    matrix_half_life: float | None
    item_item: ItemItemParams
    history_half_life: float | None
    category_strength: float


@dataclass
class _FoldSignals:
    """What the blend search keeps per validation fold."""

    task: DiscoveryTask
    sims: dict[ItemItemParams, sp.csr_matrix]
    pops: dict[float, npt.NDArray[np.float32]]
    histories: dict[
        float | None, Mapping[int, tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]]
    ]
    models: dict[tuple[AlsParams, float | None], TrainedModel]
    #: the catalogue's category peers over the warm rows (empty: none)
    peers: sp.csr_matrix

    def similarity(self, s: _SignalSet) -> sp.csr_matrix:
        return with_category_peers(self.sims[s.item_item], self.peers, s.category_strength)


def _fold_signals(
    task: DiscoveryTask,
    grid: TuneGrid,
    als_finalists: Sequence[AlsParams],
    kinds: Sequence[ItemItemParams],
    windows: Sequence[float],
    catalog: Mapping[str, Item],
) -> _FoldSignals:
    tr, as_of = task.train, task.split_ts
    defaults = ModelParams()
    warm = warm_columns(tr, Weighting(), as_of)
    pattern = interaction_matrix(tr, Weighting(), as_of=as_of)[:, warm]
    sims = {p: item_item(pattern, p) for p in kinds}
    first = kinds[0]
    models = {}
    for als, mhl in itertools.product(als_finalists, grid.matrix_half_life_days):
        base = ModelParams(als=als, weighting=Weighting(half_life_days=mhl), item_item=first)
        models[(als, mhl)] = train_model(tr, base, as_of=as_of, similarity=sims[first])
    return _FoldSignals(
        task=task,
        sims=sims,
        pops={d: recent_popularity(tr, warm, as_of - d * SECONDS_PER_DAY) for d in windows},
        histories=dict(
            zip(
                grid.history_half_life_days,
                model_histories(
                    tr,
                    as_of,
                    [Weighting(half_life_days=hl) for hl in grid.history_half_life_days],
                    defaults.history_items,
                    defaults.history_events,
                ),
                strict=True,
            )
        ),
        models=models,
        peers=category_peers_of(tr, warm, catalog),
    )


def _search_blend(
    tasks: Sequence[DiscoveryTask],
    grid: TuneGrid,
    als_finalists: Sequence[AlsParams],
    kinds: Sequence[ItemItemParams],
    windows: Sequence[float],
    catalog: Mapping[str, Item],
    seed: int,
) -> tuple[ModelParams, dict[str, object]]:
    served_kinds = [replace(p, top_m=min(p.top_m, grid.blend_top_m_max)) for p in kinds]
    folds = [_fold_signals(t, grid, als_finalists, served_kinds, windows, catalog) for t in tasks]

    scored: dict[tuple[_SignalSet, float], dict[BlendCase, float]] = {}

    def score(s: _SignalSet, share: float) -> dict[BlendCase, float]:
        """Mean over folds of each case's recall, on a `share` sample of each fold's users
        (the same sample for every set; the strength search's set is not scored again)."""
        if (s, share) in scored:
            return scored[(s, share)]
        out: dict[BlendCase, float] = {}
        for fold in folds:
            model = fold.models[(s.als, s.matrix_half_life)]
            model = replace(
                model,
                similarity=fold.similarity(s),
                params=replace(model.params, item_item=s.item_item),
            )
            users = fold.task.users
            if share < 1.0:
                rng = np.random.default_rng(seed)
                size = max(1, int(users.shape[0] * share))
                users = np.sort(rng.choice(users, size=size, replace=False))
            got = blend_recalls(
                fold.task,
                model,
                fold.histories[s.history_half_life],
                fold.pops,
                grid.blend_weights,
                users,
                scales=grid.popularity_scales,
            )
            for case, value in got.items():
                out[case] = out.get(case, 0.0) + value / len(folds)
        scored[(s, share)] = out
        return out

    users = min(f.task.users.shape[0] for f in folds)
    screen = users >= grid.screen_min_users
    # the category strength first, per item-item kind on its first signal set: every
    # strength on every signal set tripled the search for a choice the other knobs did
    # not move (three runs on the generated shops: one strength led on all 8 sets of a
    # kind), but the kinds differ (the peers are scaled to each kind's weights)
    (als, mhl), hhl = next(iter(folds[0].models)), grid.history_half_life_days[0]
    share = grid.screen_share if screen else 1.0
    strengths = grid.category_strengths if all(f.peers.nnz for f in folds) else ()
    strength_recall: dict[ItemItemParams, dict[float, float]] = {}
    strength_of: dict[ItemItemParams, float] = {}
    for p in served_kinds:
        first = _SignalSet(als, mhl, p, hhl, 0.0)
        tried = {
            g: max(score(replace(first, category_strength=g), share).values()) for g in strengths
        }
        strength_recall[p] = tried
        strength_of[p] = max(tried, key=lambda g: (tried[g], -g), default=0.0)
    sets = [
        _SignalSet(als, mhl, p, hhl, strength_of[p])
        for (als, mhl), p, hhl in itertools.product(
            folds[0].models, served_kinds, grid.history_half_life_days
        )
    ]
    rounds: list[dict[str, object]] = []
    finalists = sets
    if screen and len(sets) > grid.finalists:
        screened = {s: max(score(s, grid.screen_share).values()) for s in sets}
        finalists = sorted(sets, key=lambda s: -screened[s])[: grid.finalists]
        rounds.append(
            {
                "share_of_users": grid.screen_share,
                "signal_sets": [_set_dict(s, r) for s, r in screened.items()],
            }
        )
    best: tuple[float, _SignalSet, BlendCase] | None = None
    final: list[dict[str, object]] = []
    for s in finalists:
        results = score(s, 1.0)
        case = max(results, key=lambda c: (results[c], -_signals_used(c)))
        final.append(_set_dict(s, results[case]))
        if best is None or (results[case], -_signals_used(case)) > (
            best[0],
            -_signals_used(best[2]),
        ):
            best = (results[case], s, case)
    assert best is not None
    rounds.append({"share_of_users": 1.0, "signal_sets": final})
    value, s, case = best
    chosen = ModelParams(
        als=s.als,
        weighting=Weighting(half_life_days=s.matrix_half_life),
        history_half_life_days=s.history_half_life,
        item_item=s.item_item,
        recent_days=case.window,
        popularity_scale=case.scale,
        blend=case.weights,
        category_strength=s.category_strength,
    )
    return chosen, {
        "blend_rounds": rounds,
        "blend_cases_per_signal_set": len(windows)
        * len(grid.popularity_scales)
        * len(grid.blend_weights),
        "category_strengths": [
            {"item_item": p.as_dict(), "recall@10": {str(g): r for g, r in tried.items()}}
            for p, tried in strength_recall.items()
        ],
        "chosen_model": chosen.as_dict(),
        "chosen_model_validation_recall_at_10": value,
    }


def _signals_used(case: BlendCase) -> int:
    """How many signals a case blends: at equal recall the simpler blend is chosen."""
    w = case.weights
    return int(w.mf > 0) + int(w.knn > 0) + int(w.pop > 0)


def _set_dict(s: _SignalSet, recall: float) -> dict[str, object]:
    return {
        "als": s.als.as_dict(),
        "matrix_half_life_days": s.matrix_half_life,
        "item_item": s.item_item.as_dict(),
        "history_half_life_days": s.history_half_life,
        "category_strength": s.category_strength,
        "best_recall@10": recall,
    }
