"""indexing: interactions -> matrix-factorisation item embeddings -> evaluation -> FAISS
index -> versioned artifacts. A library: imports nothing of `worker` or `push`.

What a worker process does::

    from indexing import configure_threads, current_version, load_index
    configure_threads()                      # once, after fork
    index = load_index(store)                # verified; ArtifactError keeps the old one
    index.similar(["85123A"], k=10, exclude=purchased)
    index.recommend(recent_ids, recent_weights, k=10, exclude=purchased)
    current_version(store)                   # cheap poll for a newer build

Where versions live: `open_store(path or "s3://bucket/prefix", cache)` gives an
`ArtifactStore`; `store.fetch(version)` returns a verified local folder to `load_index` from.

What the build job does: `read_events(stream rows)` or `read_events_csv(path)`, then
`build_version(log, store, catalog=..., publish_it=True)` (= `evaluate_models` ->
`train_model` -> `save_model` -> `publish` through the quality gate).
"""

from indexing.artifact import load_index, save_model
from indexing.blend import Blend, BlendWeights, recent_item_weights, shopper_histories
from indexing.build import BuildParams, IndexSpec, build_index
from indexing.errors import (
    ArtifactError,
    ArtifactNotFoundError,
    BadRowsError,
    ChecksumError,
    EmptyDataError,
    IndexingError,
    InputError,
    ManifestError,
    MissingDependencyError,
    QualityGateError,
    StoreUnavailableError,
    UnknownItemError,
)
from indexing.evaluate import DiscoveryTask, discovery_task, evaluate_rankings, split_time
from indexing.events import (
    EVENT_FIELDS,
    EVENT_TYPES,
    EventLog,
    ReadReport,
    parse_ts,
    read_events,
    read_events_csv,
)
from indexing.experiment import CATEGORY_POPULAR, BaselineParams, EvalResult, evaluate_models
from indexing.factors import AlsParams, FoldIn, train_als
from indexing.history import (
    HistoryEntry,
    ItemHistory,
    accumulated_histories,
    decay_term,
    item_weights,
)
from indexing.item_item import ItemItemParams
from indexing.items import Item, read_items, read_items_csv
from indexing.lookup import LoadedIndex, Scored
from indexing.matrix import DEFAULT_TYPE_WEIGHTS, Weighting, event_weights
from indexing.model import ModelParams, TrainedModel, read_model_params, train_model
from indexing.neighbours import ExactNeighbours, FaissNeighbours, Neighbours, configure_threads
from indexing.online_retail import convert_online_retail
from indexing.pipeline import STAGES, BuildResult, build_version
from indexing.remote_store import RemoteStore
from indexing.store import (
    current_version,
    list_versions,
    prune_versions,
    publish,
    read_manifest,
    verify_artifact,
)
from indexing.stores import ArtifactStore, Fetched, LocalStore, open_store
from indexing.tuning import TuneGrid, tune

__all__ = [
    "CATEGORY_POPULAR",
    "DEFAULT_TYPE_WEIGHTS",
    "EVENT_FIELDS",
    "EVENT_TYPES",
    "STAGES",
    "AlsParams",
    "ArtifactError",
    "ArtifactNotFoundError",
    "ArtifactStore",
    "BadRowsError",
    "BaselineParams",
    "Blend",
    "BlendWeights",
    "BuildParams",
    "BuildResult",
    "ChecksumError",
    "DiscoveryTask",
    "EmptyDataError",
    "EvalResult",
    "EventLog",
    "ExactNeighbours",
    "FaissNeighbours",
    "Fetched",
    "FoldIn",
    "HistoryEntry",
    "IndexSpec",
    "IndexingError",
    "InputError",
    "Item",
    "ItemHistory",
    "ItemItemParams",
    "LoadedIndex",
    "LocalStore",
    "ManifestError",
    "MissingDependencyError",
    "ModelParams",
    "Neighbours",
    "QualityGateError",
    "ReadReport",
    "RemoteStore",
    "Scored",
    "StoreUnavailableError",
    "TrainedModel",
    "TuneGrid",
    "UnknownItemError",
    "Weighting",
    "accumulated_histories",
    "build_index",
    "build_version",
    "configure_threads",
    "convert_online_retail",
    "current_version",
    "decay_term",
    "discovery_task",
    "evaluate_models",
    "evaluate_rankings",
    "event_weights",
    "item_weights",
    "list_versions",
    "load_index",
    "open_store",
    "parse_ts",
    "prune_versions",
    "publish",
    "read_events",
    "read_events_csv",
    "read_items",
    "read_items_csv",
    "read_manifest",
    "read_model_params",
    "recent_item_weights",
    "save_model",
    "shopper_histories",
    "split_time",
    "train_als",
    "train_model",
    "tune",
    "verify_artifact",
]
