"""Benchmark of the indexing library: prints a table, writes JSON (no timed assertions).

    PYTHONPATH=. python bench/index.py [--sizes 24000,1000000] [--json bench/out/index.json]

Measures, in one run so ratios share the machine's noise:
- ALS training on Online Retail (`implicit`, BLAS 1 thread): seconds per iteration, full
  `train_model` time;
- per synthetic catalog size (clustered, d = 64, MF-like norms): artifact build time, the
  index type chosen and its build-time recall@10, an independent recall@10 against exact
  search, RSS of a fresh process after `load_index` (and after queries), single-query
  p50/p99 of a bare FAISS search and of `LoadedIndex.similar` on the same index (queries
  interleaved), `recommend` p50/p99 for a shopper of 10 items and of the served history's
  bound (`ModelParams().history_items`), and `fold_in` p50/p99 (10 items).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from retail import retail_csvs

import indexing
from indexing.build import exact_neighbours, recall_at_k
from indexing.model import TrainedModel
from indexing.tuning import TuneGrid


def _pct(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values)
    return {
        "p50_us": float(np.percentile(arr, 50)),
        "p99_us": float(np.percentile(arr, 99)),
        "mean_us": float(arr.mean()),
    }


def bench_training(events: Path | None, work: Path) -> dict[str, Any]:
    if events is None:
        events, _, source = retail_csvs(work / "or")
        print(f"training data: {source}", file=sys.stderr)
    log, _ = indexing.read_events_csv(events)
    params = indexing.ModelParams()
    raw = indexing.matrix.interaction_matrix(log, params.weighting)
    out: dict[str, Any] = {"users": raw.shape[0], "items": raw.shape[1], "nnz": int(raw.nnz)}
    for factors in (params.als.factors, 64):
        times = []
        for iterations in (1, 16):
            als = indexing.AlsParams(factors=factors, iterations=iterations)
            started = time.perf_counter()
            indexing.train_als(raw, als)
            times.append(time.perf_counter() - started)
        out[f"als_f{factors}_s_per_iteration"] = (times[1] - times[0]) / 15
    started = time.perf_counter()
    indexing.train_model(log, params)
    out["train_model_s"] = time.perf_counter() - started
    return out


def synthetic_model(n: int, d: int = 64, seed: int = 0) -> TrainedModel:
    """Clustered MF-like factors: sqrt(n)/4 centres, noise, log-normal norms."""
    rng = np.random.default_rng(seed)
    n_centres = max(16, int(np.sqrt(n) / 4))
    centres = rng.normal(size=(n_centres, d)).astype(np.float32)
    x = centres[rng.integers(0, n_centres, size=n)]
    x += 0.6 * rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x *= rng.lognormal(0.0, 0.5, size=(n, 1)).astype(np.float32)
    # item-item lists as wide as tuning may serve (TuneGrid.blend_top_m_max), so
    # recommend() pays the widest served item-item term and candidate source
    m = TuneGrid().blend_top_m_max
    cols = rng.integers(0, n, size=(n, m)).astype(np.int32)
    sim = sp.csr_matrix(
        (rng.random(n * m, dtype=np.float32), cols.ravel(), np.arange(0, n * m + 1, m)),
        shape=(n, n),
    )
    return TrainedModel(
        item_ids=tuple(f"i{j}" for j in range(n)),
        factors=np.ascontiguousarray(x, dtype=np.float32),
        cold=np.zeros(n, dtype=bool),
        similarity=sim,
        recent_popularity=rng.poisson(2.0, size=n).astype(np.float32),
        params=indexing.ModelParams(),
        counts={"items": n, "warm_items": n, "cold_items": 0},
    )


def _rss_child(store: str, version: str, queries: int) -> None:
    import psutil

    proc = psutil.Process()
    before = proc.memory_info().rss
    indexing.configure_threads()
    index = indexing.load_index(Path(store), version)
    after_load = proc.memory_info().rss
    rng = np.random.default_rng(3)
    for row in rng.integers(0, len(index), size=queries).tolist():
        index.similar([index.item_ids[row]], k=10)
    after_queries = proc.memory_info().rss
    full = proc.memory_full_info()
    shared_files = sum(
        m.rss
        for m in proc.memory_maps()
        if m.path.startswith(store) and m.path.endswith((".faiss", ".npy"))
    )
    print(
        json.dumps(
            {
                "rss_start_mb": before / 2**20,
                "rss_after_load_mb": after_load / 2**20,
                "rss_after_queries_mb": after_queries / 2**20,
                "uss_after_queries_mb": full.uss / 2**20,
                "mapped_artifact_resident_mb": shared_files / 2**20,
            }
        )
    )


def bench_size(n: int, store: Path, queries: int) -> dict[str, Any]:
    model = synthetic_model(n)
    started = time.perf_counter()
    version, spec = indexing.save_model(store, model)
    out: dict[str, Any] = {"items": n, "artifact_write_s": time.perf_counter() - started}
    out["index"] = spec.as_dict()
    del model
    rss = subprocess.run(
        [sys.executable, __file__, "--_rss", str(store), version, "1000"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    out.update(json.loads(rss.stdout.strip().splitlines()[-1]))

    indexing.configure_threads()
    started = time.perf_counter()
    index = indexing.load_index(store, version)
    out["load_s_with_sha256"] = time.perf_counter() - started
    faiss_index = index.neighbours.index  # type: ignore[attr-defined]
    rng = np.random.default_rng(1)
    rows = rng.integers(0, n, size=queries)
    ids = [index.item_ids[r] for r in rows.tolist()]
    vecs = np.stack([index.vector(i) for i in ids]).astype(np.float32)
    # warm-up
    for j in range(min(200, queries)):
        faiss_index.search(vecs[j : j + 1], 11)
        index.similar([ids[j]], k=10)
    bare: list[float] = []
    ours: list[float] = []
    for j in range(queries):
        q = vecs[j : j + 1]
        # alternate which runs first so neither always gets the warmer cache
        if j % 2:
            t0 = time.perf_counter_ns()
            faiss_index.search(q, 11)
            t1 = time.perf_counter_ns()
            index.similar([ids[j]], k=10)
            t2 = time.perf_counter_ns()
            bare.append((t1 - t0) / 1e3)
            ours.append((t2 - t1) / 1e3)
        else:
            t0 = time.perf_counter_ns()
            index.similar([ids[j]], k=10)
            t1 = time.perf_counter_ns()
            faiss_index.search(q, 11)
            t2 = time.perf_counter_ns()
            ours.append((t1 - t0) / 1e3)
            bare.append((t2 - t1) / 1e3)
    out["bare_faiss_search"] = _pct(bare)
    out["similar"] = _pct(ours)
    out["overhead_p50"] = out["similar"]["p50_us"] / out["bare_faiss_search"]["p50_us"] - 1
    out["overhead_p99"] = out["similar"]["p99_us"] / out["bare_faiss_search"]["p99_us"] - 1
    n_check = min(queries, 1000)
    _, found = faiss_index.search(vecs[:n_check], 10)
    truth = exact_neighbours(
        np.asarray(index.factors / index.norms[:, None], dtype=np.float32), vecs[:n_check], 10
    )
    out["recall_at_10_vs_exact"] = recall_at_k(found, truth)
    fold: list[float] = []
    rec: list[float] = []
    rec_full: list[float] = []
    full = indexing.ModelParams().history_items  # a loyal shopper: the whole served history
    for j in range(min(queries, 2000)):
        hist = [index.item_ids[r] for r in rng.integers(0, n, size=10).tolist()]
        weights = rng.uniform(1, 10, size=10).tolist()
        t0 = time.perf_counter_ns()
        index.fold_in(hist, weights)
        t1 = time.perf_counter_ns()
        fold.append((t1 - t0) / 1e3)
        if j < 500:
            t1 = time.perf_counter_ns()
            index.recommend(hist, weights, k=10)
            rec.append((time.perf_counter_ns() - t1) / 1e3)
            long = [index.item_ids[r] for r in rng.choice(n, size=full, replace=False).tolist()]
            long_weights = rng.uniform(1, 10, size=full).tolist()
            t1 = time.perf_counter_ns()
            index.recommend(long, long_weights, k=10)
            rec_full.append((time.perf_counter_ns() - t1) / 1e3)
    out["fold_in_10_items"] = _pct(fold)
    out["recommend_10_items"] = _pct(rec)
    out[f"recommend_{full}_items"] = _pct(rec_full)
    return out


def _ms(pct: dict[str, float]) -> str:
    return f"{pct['p50_us'] / 1e3:.2f}/{pct['p99_us'] / 1e3:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="24000,1000000")
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--events", type=Path, help="canonical events CSV (default: convert)")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--json", type=Path, default=Path("bench/out/index.json"))
    parser.add_argument("--_rss", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._rss:
        _rss_child(args._rss[0], args._rss[1], int(args._rss[2]))
        return 0
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "note": "2 cores shared with other engineers' jobs; one run, medians",
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with tempfile.TemporaryDirectory(prefix="pushrec-bench-") as tmp:
        work = Path(tmp)
        if not args.skip_training:
            result["training"] = bench_training(args.events, work)
            print("training:", json.dumps(result["training"]), flush=True)
        result["sizes"] = {}
        for n in (int(s) for s in args.sizes.split(",") if s):
            res = bench_size(n, work / f"store-{n}", args.queries)
            result["sizes"][str(n)] = res
            print(f"{n}: {json.dumps(res)}", flush=True)
            for p in (work / f"store-{n}").iterdir():
                if p.is_dir():
                    for f in p.iterdir():
                        f.unlink()
                    p.rmdir()
    print()
    full = indexing.ModelParams().history_items
    print(
        f"{'items':>9} {'kind':>5} {'efS':>4} {'build s':>8} {'recall':>7} {'RSS MB':>7} "
        f"{'bare p50/p99 us':>16} {'ours p50/p99 us':>16} {'ovh p50':>7} {'fold p99':>8} "
        f"{'recommend p50/p99 ms, 10 items':>31} {f'{full} items':>10}"
    )
    for n, r in result["sizes"].items():
        spec = r["index"]
        print(
            f"{n:>9} {spec['kind']:>5} {spec['ef_search'] or '-':>4} "
            f"{spec['build_seconds']:8.1f} {r['recall_at_10_vs_exact']:7.3f} "
            f"{r['rss_after_load_mb']:7.0f} "
            f"{r['bare_faiss_search']['p50_us']:7.0f}/{r['bare_faiss_search']['p99_us']:<8.0f}"
            f"{r['similar']['p50_us']:7.0f}/{r['similar']['p99_us']:<8.0f}"
            f"{r['overhead_p50']:7.0%} {r['fold_in_10_items']['p99_us']:8.1f} "
            f"{_ms(r['recommend_10_items']):>31} {_ms(r[f'recommend_{full}_items']):>10}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, sort_keys=True))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
