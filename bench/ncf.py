"""Benchmark of NeuMF (`indexing/ncf.py`): what serving it would cost (no timed assertions).

    PYTHONPATH=. python bench/ncf.py [--events events.csv] [--params ncf-eval.json]
                                     [--json bench/out/ncf.json]

With the NCF parameters `pushrec eval --models ncf --json` chose (`--params`; else the
defaults), on one torch thread:
- training wall time on the protocol's train period of Online Retail;
- the cost of one recommendation, `NcfRanker.scores` for one shopper over every item,
  p50/p99, at the real catalogue and at 24k and 1M items (an untrained network of the same
  shape: the cost does not depend on the weights), and a float32 MF dot product over the
  same items beside it;
- a shopper the network was not trained on: on the first validation split, recall@10 with
  each user's embeddings replaced by the mean embeddings of the items of their train
  period (the only fold-in NeuMF offers without gradient steps), against the trained ones.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from retail import retail_csvs
from threadpoolctl import threadpool_limits

import indexing
from indexing.experiment import rank_all
from indexing.matrix import Weighting, interaction_matrix
from indexing.ncf import NcfParams, NcfRanker, train_ncf
from indexing.tuning import TuneGrid


def _pct(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values) * 1e3
    return {"p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99))}


def per_recommendation(params: NcfParams, n_items: int, repeats: int) -> dict[str, Any]:
    """One shopper scored against every item, `repeats` times, NCF then MF alternately."""
    raw = sp.csr_matrix(([1.0], ([0], [0])), shape=(1, n_items), dtype=np.float32)
    ranker = train_ncf(raw, replace(params, epochs=0))
    user = np.zeros(1, dtype=np.int64)
    rng = np.random.default_rng(0)
    mf_items = rng.normal(size=(n_items, params.factors)).astype(np.float32)
    mf_user = rng.normal(size=params.factors).astype(np.float32)
    ncf_s: list[float] = []
    mf_s: list[float] = []
    ranker.scores(user)
    with threadpool_limits(1, "blas"):
        for _ in range(repeats):
            started = time.perf_counter()
            ranker.scores(user)
            ncf_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            mf_items @ mf_user
            mf_s.append(time.perf_counter() - started)
    return {"items": n_items, "repeats": repeats, "ncf": _pct(ncf_s), "mf_dot": _pct(mf_s)}


def _recall(ranker: NcfRanker, task: indexing.DiscoveryTask) -> float:
    ranked = rank_all(ranker, task, 10)
    n_warm = int(task.warm.sum())
    return indexing.evaluate_rankings(ranked, task.truth, n_warm, (10,))["recall@10"]


def unseen_shopper(train: indexing.EventLog, params: NcfParams) -> dict[str, float]:
    """Validation recall@10, trained user embeddings vs mean item embeddings."""
    task = indexing.discovery_task(train, TuneGrid().validation_fractions[0])
    raw = interaction_matrix(task.train, Weighting(), as_of=task.split_ts)
    ranker = train_ncf(raw, params)
    x = sp.csr_matrix(raw, copy=True)
    x.data[:] = 1.0
    counts = np.maximum(np.asarray(x.sum(axis=1)).ravel(), 1.0)
    x = sp.diags(1.0 / counts) @ x
    net = copy.deepcopy(ranker.net)
    with torch.no_grad():
        for user, item in (("user_gmf", "item_gmf"), ("user_mlp", "item_mlp")):
            means = x @ net[item].weight.numpy()
            net[user].weight.copy_(torch.from_numpy(np.asarray(means, dtype=np.float32)))
    return {
        "trained_user_embeddings": _recall(ranker, task),
        "mean_item_embeddings": _recall(NcfRanker(net, params), task),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=Path)
    parser.add_argument("--params", type=Path, help="JSON of `pushrec eval --models ncf`")
    parser.add_argument("--sizes", default="24000,1000000")
    parser.add_argument("--json", type=Path, default=Path("bench/out/ncf.json"))
    args = parser.parse_args()
    params = NcfParams()
    if args.params:
        chosen = json.loads(args.params.read_text())["ncf"]["params"]
        params = NcfParams(**{**chosen, "layers": tuple(chosen["layers"])})
    with tempfile.TemporaryDirectory() as tmp:
        events = args.events
        if events is None:
            events, _, source = retail_csvs(Path(tmp) / "or")
            print(f"data: {source}", file=sys.stderr)
        log, _ = indexing.read_events_csv(events)
    task = indexing.discovery_task(log)
    raw = interaction_matrix(task.train, Weighting(), as_of=task.split_ts)
    started = time.perf_counter()
    train_ncf(raw, params)
    result: dict[str, Any] = {
        "params": params.as_dict(),
        "train": {
            "users": raw.shape[0],
            "items": raw.shape[1],
            "cells": int(raw.nnz),
            "seconds": time.perf_counter() - started,
        },
    }
    print("train:", json.dumps(result["train"]), flush=True)
    sizes = [raw.shape[1]] + [int(s) for s in args.sizes.split(",") if s]
    result["per_recommendation"] = []
    for n in sizes:
        row = per_recommendation(params, n, repeats=200 if n <= 100_000 else 10)
        print(json.dumps(row), flush=True)
        result["per_recommendation"].append(row)
    result["unseen_shopper_validation_recall@10"] = unseen_shopper(task.train, params)
    print("unseen shopper:", json.dumps(result["unseen_shopper_validation_recall@10"]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, sort_keys=True))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
