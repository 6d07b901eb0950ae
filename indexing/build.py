"""FAISS index construction over L2-normalised item vectors (inner product = cosine).

The index type follows the catalog size: exact (`IndexFlatIP`) up to `exact_max_items`,
HNSW (`IndexHNSWFlat`, inner product) above. For HNSW, `efSearch` is raised step by step
until recall@10 against exact search on a sample of item queries reaches `target_recall`;
the measured recall and the parameters go into the manifest (`IndexSpec.as_dict`).
Row i of the index is row i of the item table (no id map).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import faiss
import numpy as np
import numpy.typing as npt

from indexing.errors import InputError

__all__ = [
    "EF_SEARCH_STEPS",
    "BuildParams",
    "IndexSpec",
    "build_index",
    "exact_neighbours",
    "normalize_rows",
    "recall_at_k",
]

EF_SEARCH_STEPS: tuple[int, ...] = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


@dataclass(frozen=True)
class BuildParams:
    """How to build: size threshold for exact search, HNSW shape, recall target, sample."""

    exact_max_items: int = 50_000
    hnsw_m: int = 32
    ef_construction: int = 80
    target_recall: float = 0.97
    recall_queries: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class IndexSpec:
    """What was built and how well it does; written into the manifest as `index`."""

    kind: str  # "flat" or "hnsw"
    metric: str
    dim: int
    count: int
    recall_at_10: float
    recall_queries: int
    build_seconds: float
    hnsw_m: int | None = None
    ef_construction: int | None = None
    ef_search: int | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def normalize_rows(vectors: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """Float32 C-contiguous copy with each row scaled to unit L2 norm (zero rows stay 0)."""
    v = np.array(vectors, dtype=np.float32, order="C", copy=True)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    np.divide(v, norms, out=v, where=norms > 0)
    return v


def exact_neighbours(
    vectors: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int
) -> npt.NDArray[np.int64]:
    """Int64 (n_queries, k): exact top-k rows of `vectors` by inner product."""
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    _, rows = flat.search(queries, k)
    return np.asarray(rows, dtype=np.int64)


def recall_at_k(found: npt.NDArray[np.int64], truth: npt.NDArray[np.int64], k: int = 10) -> float:
    """Mean |found[:, :k] ∩ truth[:, :k]| / k over query rows."""
    hits = sum(
        len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True)
    )
    return hits / (k * found.shape[0]) if found.shape[0] else 1.0


def build_index(
    vectors: npt.NDArray[np.float32],
    params: BuildParams = BuildParams(),
    *,
    ef_steps: Sequence[int] = EF_SEARCH_STEPS,
) -> tuple[faiss.Index, IndexSpec]:
    """Build the index for unit-norm `vectors` (float32 (n, d)) and measure its recall@10.

    Raises `InputError` for an empty or non-2-D input. HNSW whose recall stays below the
    target at the largest `efSearch` step is still returned, with the recall it reached.
    """
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise InputError(f"need a non-empty (n, d) array, got shape {vectors.shape}")
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    rng = np.random.default_rng(params.seed)
    n_q = min(params.recall_queries, n)
    queries = x[np.sort(rng.choice(n, size=n_q, replace=False))]
    k = min(10, n)
    started = time.perf_counter()
    if n <= params.exact_max_items:
        index = faiss.IndexFlatIP(d)
        index.add(x)
        seconds = time.perf_counter() - started
        _, found = index.search(queries, k)
        truth = exact_neighbours(x, queries, k)
        return index, IndexSpec(
            kind="flat",
            metric="inner_product",
            dim=d,
            count=n,
            recall_at_10=recall_at_k(found, truth, k),
            recall_queries=n_q,
            build_seconds=seconds,
        )
    hnsw = faiss.IndexHNSWFlat(d, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = params.ef_construction
    hnsw.add(x)
    seconds = time.perf_counter() - started
    truth = exact_neighbours(x, queries, k)
    recall, chosen = 0.0, ef_steps[-1]
    for ef in ef_steps:
        hnsw.hnsw.efSearch = ef
        _, found = hnsw.search(queries, k)
        recall = recall_at_k(found, truth, k)
        if recall >= params.target_recall:
            chosen = ef
            break
    hnsw.hnsw.efSearch = chosen
    return hnsw, IndexSpec(
        kind="hnsw",
        metric="inner_product",
        dim=d,
        count=n,
        recall_at_10=recall,
        recall_queries=n_q,
        build_seconds=seconds,
        hnsw_m=params.hnsw_m,
        ef_construction=params.ef_construction,
        ef_search=chosen,
    )
