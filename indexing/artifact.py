"""A `TrainedModel` to a store version and back: `save_model` and `load_index`.

Arrays of a version (all `.npy`, loaded with `allow_pickle=False`):

| file | dtype, shape | what |
|---|---|---|
| `item_ids.npy` | `<U`, (n,) | item id of each row |
| `factors.npy` | float32, (n, d) | raw ALS item factors (memory-mapped on load) |
| `norms.npy` | float32, (n,) | L2 norm of each factor row; index holds factors / norms |
| `cold.npy` | bool, (n,) | row's vector comes from attributes (cold start) |
| `popularity.npy` | float32, (n,) | distinct users in the last `recent_days` |
| `gram.npy` | float64, (d, d) | YᵀY over warm rows (fold-in) |
| `knn_indptr.npy`, `knn_indices.npy`, `knn_data.npy` | int64, int32, float32 | top-M item-KNN CSR |
| `category_names.npy`, `brand_names.npy` | `<U`, (g,) | categories and brands of warm items |
| `category_means.npy`, `brand_means.npy` | float32, (g, d) | their mean raw factor |
| `index.faiss` | FAISS | flat or HNSW over unit vectors, row ids |

The four attribute arrays are written since the live overlay (`LoadedIndex.add_items`);
a version without them still loads, with `attribute_means` None.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from indexing.attributes import ATTRIBUTE_ARRAYS, AttributeMeans
from indexing.blend import Blend
from indexing.build import BuildParams, IndexSpec, build_index, normalize_rows
from indexing.errors import ChecksumError, ManifestError
from indexing.factors import FoldIn, gram_matrix
from indexing.items import Item
from indexing.lookup import LoadedIndex
from indexing.model import ModelParams, TrainedModel
from indexing.neighbours import FaissNeighbours
from indexing.store import INDEX_FILE, current_version, verify_artifact, write_artifact

__all__ = ["load_index", "save_model"]

_ARRAYS = (
    "item_ids",
    "factors",
    "norms",
    "cold",
    "popularity",
    "gram",
    "knn_indptr",
    "knn_indices",
    "knn_data",
)


def save_model(
    store: Path,
    model: TrainedModel,
    *,
    build: BuildParams = BuildParams(),  # noqa: B008 - frozen dataclass
    evaluation: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    catalog: Mapping[str, Item] | None = None,
) -> tuple[str, IndexSpec]:
    """Build the FAISS index for `model` and write a complete (unpublished) version.

    evaluation: figures for the manifest; the quality gate reads
    `evaluation["served"]["recall@10"]`. catalog: the one the model was trained with; its
    categories and brands give the attribute means items added later get their vectors
    from. Returns (version, index spec).
    """
    norms = np.linalg.norm(model.factors, axis=1).astype(np.float32)
    index, spec = build_index(normalize_rows(model.factors), build)
    sim = model.similarity
    arrays: dict[str, npt.NDArray[Any]] = {
        "item_ids": np.array(model.item_ids, dtype=str),
        "factors": model.factors,
        "norms": norms,
        "cold": model.cold,
        "popularity": model.recent_popularity,
        "gram": gram_matrix(model.factors, ~model.cold),
        "knn_indptr": sim.indptr.astype(np.int64),
        "knn_indices": sim.indices.astype(np.int32),
        "knn_data": sim.data.astype(np.float32),
    }
    dim = int(model.factors.shape[1])
    attrs = AttributeMeans.of(model.item_ids, model.factors, ~model.cold, catalog or {})
    arrays.update(attrs.arrays(dim))
    manifest: dict[str, Any] = {
        "dim": dim,
        "metric": "inner_product",
        "normalized": True,
        "counts": dict(model.counts),
        "params": model.params.as_dict(),
        "build": {k: v for k, v in vars(build).items()},
        "index": spec.as_dict(),
        "evaluation": dict(evaluation or {}),
    }
    manifest.update(extra or {})
    return write_artifact(store, index, arrays, manifest), spec


def _load_array(folder: Path, name: str, mmap: bool) -> npt.NDArray[Any]:
    try:
        arr: npt.NDArray[Any] = np.load(
            folder / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False
        )
    except (OSError, ValueError) as exc:
        raise ChecksumError(f"{folder}: cannot read {name}.npy: {exc}") from exc
    return arr


def load_index(
    store: Path, version: str | None = None, *, verify: bool = True, mmap: bool = True
) -> LoadedIndex:
    """Load `version` (default: the published one) after verifying its manifest and, when
    `verify`, every file's sha256. Flat/HNSW storage and the factor array are memory-mapped
    when `mmap`, so worker processes on one machine share the pages.

    Raises `ArtifactNotFoundError`, `ManifestError` or `ChecksumError`; the caller keeps
    serving its old index. Call `configure_threads()` once per process before searching.
    """
    version = version or current_version(store)
    manifest = verify_artifact(store, version, checksums=verify)
    folder = store / version
    present = {n.removesuffix(".npy") for n in manifest["files"]}
    missing = set(_ARRAYS) - present
    if missing:
        raise ManifestError(f"{folder}: manifest lacks arrays {sorted(missing)}")
    arr = {name: _load_array(folder, name, mmap and name == "factors") for name in _ARRAYS}
    flag = faiss.IO_FLAG_MMAP_IFC if mmap else 0
    try:
        index = faiss.read_index(str(folder / INDEX_FILE), flag)
    except RuntimeError as exc:
        raise ChecksumError(f"{folder}: FAISS cannot read {INDEX_FILE}: {exc}") from exc
    try:
        n, d = int(manifest["counts"]["items"]), int(manifest["dim"])
        params = ModelParams.from_dict(manifest["params"])
        ef_search = manifest["index"].get("ef_search")
    except (KeyError, TypeError, ValueError, AttributeError, AssertionError) as exc:
        raise ManifestError(f"{folder}: manifest fields missing or malformed: {exc!r}") from exc
    shapes = {
        "index.ntotal": (int(index.ntotal), n),
        "index.d": (int(index.d), d),
        "item_ids": (arr["item_ids"].shape, (n,)),
        "factors": (arr["factors"].shape, (n, d)),
        "norms": (arr["norms"].shape, (n,)),
        "cold": (arr["cold"].shape, (n,)),
        "popularity": (arr["popularity"].shape, (n,)),
        "gram": (arr["gram"].shape, (d, d)),
        "knn_indptr": (arr["knn_indptr"].shape, (n + 1,)),
    }
    wrong = {k: v for k, v in shapes.items() if v[0] != v[1]}
    if wrong:
        raise ManifestError(f"{folder}: shapes disagree with the manifest: {wrong}")
    try:
        sim = sp.csr_matrix((arr["knn_data"], arr["knn_indices"], arr["knn_indptr"]), shape=(n, n))
    except ValueError as exc:
        raise ManifestError(f"{folder}: inconsistent item-KNN arrays: {exc}") from exc
    attributes: AttributeMeans | None = None
    if present.issuperset(ATTRIBUTE_ARRAYS):
        try:
            attributes = AttributeMeans.from_arrays(
                {name: _load_array(folder, name, False) for name in ATTRIBUTE_ARRAYS}, d
            )
        except ValueError as exc:
            raise ManifestError(f"{folder}: attribute arrays disagree: {exc}") from exc
    factors: npt.NDArray[np.float32] = arr["factors"]
    fold = FoldIn(factors, params.als.regularization, params.als.alpha, gram=arr["gram"])
    blend = Blend(factors, fold, sim, arr["popularity"], params.blend, params.popularity_scale)
    return LoadedIndex(
        version=version,
        manifest=manifest,
        item_ids=arr["item_ids"].tolist(),
        factors=factors,
        norms=arr["norms"],
        cold=arr["cold"].astype(bool),
        blend=blend,
        neighbours=FaissNeighbours(index, ef_search),
        attribute_means=attributes,
    )
