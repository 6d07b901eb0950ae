"""Offline evaluation of the served model against every baseline on one split.

`evaluate_models(log, params, baselines)` runs the protocol of `indexing.evaluate` once
(`indexing.tuning.tune` chooses the parameters on validation splits before). The served
figure is what a worker serves: up to `FULL_SCORE_MAX_ITEMS` items, `Blend.score` over
every warm item — the call `LoadedIndex.recommend` makes; above, `recommend`'s own answers
on the model written and loaded as an artifact (its candidate set), with the every-item
scoring reported beside it. The path is chosen by the size of the model evaluated, trained
on the train period with the catalogue's categories but not its cold items (no train
event: they cannot be a discovery); the served version, trained on every event with
the catalogue's cold items, can sit on the other side of the limit when it is close.

With a catalogue that has categories, `CATEGORY_POPULAR` (each shopper's categories'
best sellers, `indexing.categories` alone) is reported beside the baselines as a
reference: not one of the baselines the served model is measured against
(`best_baseline`), but what the catalogue alone gives.
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import numpy.typing as npt

from indexing.artifact import load_index, save_model
from indexing.baselines import (
    AlsRanker,
    EaseRanker,
    ItemItemRanker,
    PopularityRanker,
    Ranker,
    popularity,
    top_k,
)
from indexing.blend import Blend, BlendWeights
from indexing.evaluate import DiscoveryTask, Metrics, discovery_task, evaluate_rankings
from indexing.events import EventLog
from indexing.factors import AlsParams, train_als
from indexing.history import model_histories
from indexing.item_item import ItemItemParams, ease_weights, item_item
from indexing.items import Item
from indexing.lookup import FULL_SCORE_MAX_ITEMS
from indexing.matrix import SECONDS_PER_DAY, Weighting, interaction_matrix
from indexing.model import ModelParams, TrainedModel, category_peers_of, train_model

__all__ = [
    "CATEGORY_POPULAR",
    "ITEM_ITEM_NAMES",
    "SERVED",
    "SERVED_EVERY_ITEM",
    "BaselineParams",
    "EvalResult",
    "evaluate_models",
    "loaded_rankings",
    "rank_all",
    "served_rankings",
]

SERVED = "served_blend"
#: Above `FULL_SCORE_MAX_ITEMS` the worker scores a candidate set (`LoadedIndex.recommend`);
#: the evaluation then reports that as `SERVED` and the every-item scoring under this name.
SERVED_EVERY_ITEM = "served_blend_every_item"
#: The reference model of a catalogue with categories (module docstring).
CATEGORY_POPULAR = "category_popular"
_NOT_BASELINES = (SERVED, SERVED_EVERY_ITEM, CATEGORY_POPULAR)
_DEPTH = 20


def _default_item_item() -> tuple[ItemItemParams, ...]:
    return (
        ItemItemParams("cosine", 20),
        ItemItemParams("bm25", 100),
        ItemItemParams("rp3beta", 50, alpha=0.5, beta=0.6),
        ItemItemParams("ease", 200, l2=400.0),
    )


@dataclass(frozen=True)
class BaselineParams:
    """Baseline settings (tuned on validation like the model, so the bar is honest):
    the popularity window, one setting per item-item kind, plain ALS. Defaults: what
    `tune` chose on Online Retail, so `eval --no-tune` reproduces docs/indexing.md."""

    recent_days: float = 14.0
    item_item: tuple[ItemItemParams, ...] = field(default_factory=_default_item_item)
    als: AlsParams = field(default_factory=lambda: AlsParams(factors=64))

    def as_dict(self) -> dict[str, object]:
        return {
            "recent_days": self.recent_days,
            "item_item": [p.as_dict() for p in self.item_item],
            "als": self.als.as_dict(),
        }


#: The table's name of each item-item baseline kind.
ITEM_ITEM_NAMES = {
    "cosine": "item_knn",
    "bm25": "item_knn_bm25",
    "rp3beta": "rp3beta",
    "ease": "ease",
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
            (n for n in self.metrics if n not in _NOT_BASELINES),
            key=lambda n: self.metrics[n]["recall@10"],
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
    row_code, row_of = model.rows_of(task.train.item_ids)
    warm_rows = np.flatnonzero(~model.cold)
    (histories,) = model_histories(
        task.train, task.split_ts, [weighting], params.history_items, params.history_events
    )
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


def loaded_rankings(
    task: DiscoveryTask, model: TrainedModel, depth: int = _DEPTH
) -> dict[int, list[int]]:
    """Top-`depth` item codes per test user from `LoadedIndex.recommend` on the model
    written and loaded as a worker loads it (FAISS index included): exactly what serves,
    the candidate set of a large catalogue included. The user's train items are left out
    after the call, as `top_k` leaves them out."""
    params = model.params
    (histories,) = model_histories(
        task.train,
        task.split_ts,
        [params.history_weighting],
        params.history_items,
        params.history_events,
    )
    code_of = {item_id: code for code, item_id in enumerate(task.train.item_ids)}
    ids = task.train.item_ids
    out: dict[int, list[int]] = {}
    threads = faiss.omp_get_max_threads()
    # one query at a time on one thread, as a worker searches (`configure_threads`):
    # OpenMP threads on a single query cost ~10x here
    faiss.omp_set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="pushrec-eval-") as tmp:
            version, _ = save_model(Path(tmp), model)
            index = load_index(Path(tmp), version)
            for user in task.users.tolist():
                codes, weights = histories[user]
                seen = task.train_items.get(user, frozenset())
                answer = index.recommend(
                    [ids[c] for c in codes.tolist()], weights.tolist(), k=depth + len(seen)
                )
                ranked = [code_of[i] for i, _ in answer]
                out[user] = [c for c in ranked if c not in seen and task.warm[c]][:depth]
    finally:
        faiss.omp_set_num_threads(threads)
    return out


def _chunks(users: npt.NDArray[np.int64], n_items: int) -> list[npt.NDArray[np.int64]]:
    """Split users so one dense (chunk, n_items) float32 score block stays under ~64 MB."""
    size = max(1, (1 << 24) // max(n_items, 1))
    return [users[i : i + size] for i in range(0, users.shape[0], size)]


def rank_all(ranker: Ranker, task: DiscoveryTask, depth: int = _DEPTH) -> dict[int, list[int]]:
    """The top `depth` item codes of `ranker` per test user of `task` (`top_k`'s rules)."""
    ranked: dict[int, list[int]] = {}
    for chunk in _chunks(task.users, len(task.train.item_ids)):
        ranked.update(top_k(ranker.scores(chunk), chunk, task.train_items, task.warm, depth))
    return ranked


def _baseline_rankings(
    task: DiscoveryTask,
    baselines: BaselineParams,
    timings: dict[str, float],
    catalog: Mapping[str, Item],
) -> dict[str, dict[int, list[int]]]:
    tr, n_items = task.train, len(task.train.item_ids)
    raw = interaction_matrix(tr, Weighting(), as_of=task.split_ts)
    out: dict[str, dict[int, list[int]]] = {}

    def run(name: str, ranker: Callable[[], Ranker]) -> None:
        started = time.perf_counter()
        out[name] = rank_all(ranker(), task)
        timings[name] = time.perf_counter() - started

    def item_item_ranker(params: ItemItemParams) -> Ranker:
        if params.kind == "ease":
            return EaseRanker(raw, ease_weights(raw, params.l2, params.ease_max_items))
        return ItemItemRanker(raw, item_item(raw, params))

    recent_since = task.split_ts - baselines.recent_days * SECONDS_PER_DAY
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
    for params in baselines.item_item:
        run(ITEM_ITEM_NAMES[params.kind], functools.partial(item_item_ranker, params))
    run("als", lambda: AlsRanker(train_als(raw, baselines.als)))
    peers = category_peers_of(tr, np.arange(n_items, dtype=np.intp), catalog)
    if peers.nnz:
        run(CATEGORY_POPULAR, lambda: ItemItemRanker(raw, peers))
    return out


def evaluate_models(
    log: EventLog,
    params: ModelParams,
    baselines: BaselineParams,
    *,
    catalog: Mapping[str, Item] | None = None,
    ks: Sequence[int] = (10, 20),
) -> EvalResult:
    """Run the protocol on `log`: every baseline and the served model, same split.
    `catalog` gives the items' categories (module docstring)."""
    task = discovery_task(log)
    n_warm = int(task.warm.sum())
    timings: dict[str, float] = {}
    catalog = catalog or {}
    warm_ids = [task.train.item_ids[c] for c in np.flatnonzero(task.warm).tolist()]
    known = {i: catalog[i] for i in warm_ids if i in catalog}
    rankings = _baseline_rankings(task, baselines, timings, known)
    started = time.perf_counter()
    model = train_model(task.train, params, as_of=task.split_ts, catalog=known)
    every_item = served_rankings(task, model)
    timings[SERVED] = time.perf_counter() - started
    if len(model.item_ids) > FULL_SCORE_MAX_ITEMS:
        rankings[SERVED_EVERY_ITEM] = every_item
        timings[SERVED_EVERY_ITEM] = timings[SERVED]
        started = time.perf_counter()
        rankings[SERVED] = loaded_rankings(task, model)
        timings[SERVED] = time.perf_counter() - started
    else:
        rankings[SERVED] = every_item
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
