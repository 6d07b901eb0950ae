"""Offline evaluation of the served model against every baseline, and hyperparameter
tuning on a validation split inside the train period (never on the test period).

`evaluate_models(log, params, baselines)` runs the protocol of `indexing.evaluate` once;
`tune(log)` chooses `ModelParams` and `BaselineParams` on `discovery_task(train period)`.
The served model is scored through `Blend.score` over every warm item — the same call the
worker makes per event (see `indexing.lookup.LoadedIndex.recommend`).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from indexing.baselines import (
    AlsRanker,
    ItemKnnRanker,
    PopularityRanker,
    Ranker,
    popularity,
    top_k,
)
from indexing.blend import Blend, BlendWeights, shopper_histories
from indexing.evaluate import DiscoveryTask, Metrics, discovery_task, evaluate_rankings
from indexing.events import EventLog
from indexing.factors import AlsParams, train_als
from indexing.matrix import Weighting, interaction_matrix
from indexing.model import ModelParams, TrainedModel, train_model

__all__ = [
    "SERVED",
    "BaselineParams",
    "EvalResult",
    "TuneGrid",
    "evaluate_models",
    "served_rankings",
    "tune",
]

SERVED = "served_blend"
_DAY = 86_400.0
_DEPTH = 20


@dataclass(frozen=True)
class BaselineParams:
    """Baseline settings (tuned on validation like the model, so the bar is honest)."""

    recent_days: float = 3.0
    knn_top_m: int = 20
    als: AlsParams = field(default_factory=AlsParams)

    def as_dict(self) -> dict[str, object]:
        return {
            "recent_days": self.recent_days,
            "knn_top_m": self.knn_top_m,
            "als": self.als.as_dict(),
        }


@dataclass
class EvalResult:
    """Metrics per model name, the split, and the served model's top-20 per test user."""

    split_ts: float
    metrics: dict[str, Metrics]
    served_recs: dict[str, list[str]]
    seconds: dict[str, float]
    counts: dict[str, int]

    def best_baseline(self) -> tuple[str, float]:
        name = max(
            (n for n in self.metrics if n != SERVED), key=lambda n: self.metrics[n]["recall@10"]
        )
        return name, self.metrics[name]["recall@10"]

    def as_dict(self) -> dict[str, object]:
        name, best = self.best_baseline()
        served = self.metrics[SERVED]["recall@10"]
        return {
            "protocol": "next-period discovery (issue 3)",
            "split_ts": self.split_ts,
            "counts": self.counts,
            "metrics": self.metrics,
            "best_baseline": name,
            "served_vs_best_baseline_recall@10": served / best if best else None,
            "seconds": self.seconds,
        }


def served_rankings(
    task: DiscoveryTask,
    model: TrainedModel,
    *,
    blend: BlendWeights | None = None,
    history: Weighting | None = None,
) -> dict[int, list[int]]:
    """Top-`_DEPTH` item codes per test user from `Blend.score` over all warm items.

    blend / history: override the model's blend weights / shopper-history weighting (tuning).
    """
    params = model.params
    weighting = history or params.history_weighting
    code_of = {item_id: code for code, item_id in enumerate(task.train.item_ids)}
    row_code = np.array([code_of[i] for i in model.item_ids], dtype=np.int64)
    row_of = np.full(len(task.train.item_ids), -1, dtype=np.intp)
    row_of[row_code] = np.arange(row_code.shape[0])
    warm_rows = np.flatnonzero(~model.cold)
    histories = shopper_histories(task.train, weighting, task.split_ts, params.history_items)
    scorer: Blend = model.blend()
    out: dict[int, list[int]] = {}
    n_items = len(task.train.item_ids)
    for chunk in _chunks(task.users, n_items):
        scores = np.full((chunk.shape[0], n_items), -np.inf, dtype=np.float32)
        for r, user in enumerate(chunk.tolist()):
            codes, weights = histories[user]
            rows = row_of[codes]
            ok = rows >= 0
            scores[r, row_code[warm_rows]] = scorer.score(rows[ok], weights[ok], warm_rows, blend)
        out.update(top_k(scores, chunk, task.train_items, task.warm, _DEPTH))
    return out


def _chunks(users: npt.NDArray[np.int64], n_items: int) -> list[npt.NDArray[np.int64]]:
    """Split users so one dense (chunk, n_items) float32 score block stays under ~64 MB."""
    size = max(1, (1 << 24) // max(n_items, 1))
    return [users[i : i + size] for i in range(0, users.shape[0], size)]


def _baseline_rankings(
    task: DiscoveryTask, baselines: BaselineParams, timings: dict[str, float]
) -> dict[str, dict[int, list[int]]]:
    tr, n_items, users = task.train, len(task.train.item_ids), task.users
    raw = interaction_matrix(tr, Weighting(), as_of=task.split_ts)
    out: dict[str, dict[int, list[int]]] = {}

    def run(name: str, ranker: Callable[[], Ranker]) -> None:
        started = time.perf_counter()
        model = ranker()
        ranked: dict[int, list[int]] = {}
        for chunk in _chunks(users, n_items):
            ranked.update(top_k(model.scores(chunk), chunk, task.train_items, task.warm, _DEPTH))
        out[name] = ranked
        timings[name] = time.perf_counter() - started

    recent_since = task.split_ts - baselines.recent_days * _DAY
    run(
        "popularity_all",
        lambda: PopularityRanker(popularity(tr.users, tr.items, tr.ts, n_items)),
    )
    run(
        f"popularity_recent_{baselines.recent_days:g}d",
        lambda: PopularityRanker(
            popularity(tr.users, tr.items, tr.ts, n_items, since=recent_since)
        ),
    )
    run("item_knn", lambda: ItemKnnRanker(raw, baselines.knn_top_m))
    run("als", lambda: AlsRanker(train_als(raw, baselines.als)))
    return out


def evaluate_models(
    log: EventLog,
    params: ModelParams,
    baselines: BaselineParams,
    *,
    ks: Sequence[int] = (10, 20),
) -> EvalResult:
    """Run the protocol on `log`: every baseline and the served model, same split."""
    task = discovery_task(log)
    n_warm = int(task.warm.sum())
    timings: dict[str, float] = {}
    rankings = _baseline_rankings(task, baselines, timings)
    started = time.perf_counter()
    model = train_model(task.train, params, as_of=task.split_ts)
    rankings[SERVED] = served_rankings(task, model)
    timings[SERVED] = time.perf_counter() - started
    metrics = {name: evaluate_rankings(r, task.truth, n_warm, ks) for name, r in rankings.items()}
    ids = task.train.user_ids
    items = task.train.item_ids
    recs = {ids[u]: [items[i] for i in r] for u, r in rankings[SERVED].items()}
    return EvalResult(
        split_ts=task.split_ts,
        metrics=metrics,
        served_recs=recs,
        seconds=timings,
        counts={
            "events": len(log),
            "train_events": len(task.train),
            "test_events": len(task.test),
            "warm_items": n_warm,
            "test_users": len(task.truth),
        },
    )


@dataclass(frozen=True)
class TuneGrid:
    """Values tried on the validation split (baselines get the same windows and M)."""

    factors: Sequence[int] = (32, 64, 128)
    regularization: Sequence[float] = (0.05, 0.5)
    alpha: Sequence[float] = (1.0, 2.0, 5.0)
    iterations: int = 15
    recent_days: Sequence[float] = (3.0, 7.0, 14.0, 30.0)
    knn_top_m: Sequence[int] = (20, 50, 100, 200)
    matrix_half_life_days: Sequence[float | None] = (None, 60.0)
    blend_recent_days: Sequence[float] = (3.0, 7.0, 14.0)
    blend_knn: Sequence[float] = (0.0, 0.3, 0.5)
    blend_pop: Sequence[float] = (0.5, 1.0, 1.5)
    history_half_life_days: Sequence[float | None] = (None, 90.0)
    als_finalists: int = 2


def tune(
    log: EventLog,
    grid: TuneGrid = TuneGrid(),
    *,
    seed: int = 0,
) -> tuple[ModelParams, BaselineParams, dict[str, object]]:
    """Choose hyperparameters on the validation split of `log` (pass the train period).

    Baselines get their best value of each knob. The served model's ALS comes from the
    `als_finalists` best plain-ALS settings; for each, the matrix half-life, popularity
    window, blend weights and history half-life are searched. Returns (model params,
    baseline params, a report of the search).
    """
    task = discovery_task(log)
    n_items, users, tr = len(log.item_ids), task.users, task.train
    n_warm = int(task.warm.sum())

    def recall(r: Mapping[int, list[int]]) -> float:
        return evaluate_rankings(r, task.truth, n_warm, (10,))["recall@10"]

    def ranked(ranker: Ranker) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for chunk in _chunks(users, n_items):
            out.update(top_k(ranker.scores(chunk), chunk, task.train_items, task.warm, 10))
        return out

    report: dict[str, object] = {
        "validation_split_ts": task.split_ts,
        "validation_users": len(task.truth),
    }
    pop_scores = {
        d: recall(
            ranked(
                PopularityRanker(
                    popularity(tr.users, tr.items, tr.ts, n_items, since=task.split_ts - d * _DAY)
                )
            )
        )
        for d in grid.recent_days
    }
    raw = interaction_matrix(tr, Weighting(), as_of=task.split_ts)
    knn_scores = {m: recall(ranked(ItemKnnRanker(raw, m))) for m in grid.knn_top_m}
    als_scores: dict[AlsParams, float] = {}
    for f, reg, a in itertools.product(grid.factors, grid.regularization, grid.alpha):
        p = AlsParams(factors=f, regularization=reg, alpha=a, iterations=grid.iterations, seed=seed)
        als_scores[p] = recall(ranked(AlsRanker(train_als(raw, p))))
    best_days = max(pop_scores, key=lambda d: pop_scores[d])
    best_m = max(knn_scores, key=lambda m: knn_scores[m])
    ranked_als = sorted(als_scores, key=lambda p: -als_scores[p])
    baselines = BaselineParams(recent_days=best_days, knn_top_m=best_m, als=ranked_als[0])
    best: tuple[float, ModelParams] | None = None
    blend_log: list[dict[str, object]] = []
    for als, mhl, days in itertools.product(
        ranked_als[: grid.als_finalists], grid.matrix_half_life_days, grid.blend_recent_days
    ):
        base = ModelParams(
            als=als,
            weighting=Weighting(half_life_days=mhl),
            knn_top_m=best_m,
            recent_days=days,
        )
        model = train_model(tr, base, as_of=task.split_ts)
        for hl, wk, wp in itertools.product(
            grid.history_half_life_days, grid.blend_knn, grid.blend_pop
        ):
            bw = BlendWeights(mf=1.0, knn=wk, pop=wp)
            history = Weighting(base.weighting.type_weights, hl)
            score = recall(served_rankings(task, model, blend=bw, history=history))
            candidate = replace(base, blend=bw, history_half_life_days=hl)
            blend_log.append({**candidate.as_dict(), "recall@10": score})
            if best is None or score > best[0]:
                best = (score, candidate)
    assert best is not None
    report.update(
        popularity_recent={str(k): v for k, v in pop_scores.items()},
        item_knn={str(k): v for k, v in knn_scores.items()},
        als=[{**p.as_dict(), "recall@10": s} for p, s in als_scores.items()],
        blend=blend_log,
        chosen_model=best[1].as_dict(),
        chosen_model_validation_recall_at_10=best[0],
        chosen_baselines=baselines.as_dict(),
    )
    return best[1], baselines, report
