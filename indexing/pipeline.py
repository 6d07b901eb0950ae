"""One index build, start to finish, as a plain function: the body of `pushrec index build`
and of the worker's rebuild task.

``build_version(log, store)``: evaluate the parameters on the log's own next-period split
(the figure the quality gate compares), train on the whole log, build the FAISS index,
write a version (uploaded, on an object store), and optionally publish it through the gate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexing.artifact import save_model
from indexing.build import BuildParams, IndexSpec
from indexing.errors import EmptyDataError, QualityGateError
from indexing.events import EventLog
from indexing.experiment import SERVED, BaselineParams, evaluate_models
from indexing.items import Item
from indexing.model import ModelParams, train_model
from indexing.store import DEFAULT_MAX_DROP, GateDecision
from indexing.stores import ArtifactStore, LocalStore

__all__ = ["STAGES", "BuildResult", "build_version"]

#: The stages `build_version` reports to its `progress` callback, in order.
STAGES = ("evaluating", "training", "building the index", "uploading", "publishing")


@dataclass
class BuildResult:
    """What one build produced. `published` is the gate's decision, None when not asked;
    `refused` holds the gate's message when it said no (the version stays on disk)."""

    store: str  # the folder or s3:// URL
    version: str
    index: IndexSpec
    counts: dict[str, int]
    evaluation: dict[str, Any]
    seconds: dict[str, float]
    published: GateDecision | None = None
    refused: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def served_recall(self) -> float | None:
        value = self.evaluation.get("served", {}).get("recall@10")
        return float(value) if isinstance(value, int | float) else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "version": self.version,
            "index": self.index.as_dict(),
            "counts": self.counts,
            "served_recall@10": self.served_recall,
            "seconds": self.seconds,
            "published": dict(self.published) if self.published is not None else None,
            "refused": self.refused,
            "notes": self.notes,
        }


def build_version(
    log: EventLog,
    store: ArtifactStore | Path,
    *,
    catalog: Mapping[str, Item] | None = None,
    params: ModelParams | None = None,
    build: BuildParams | None = None,
    publish_it: bool = False,
    force: bool = False,
    max_drop: float = DEFAULT_MAX_DROP,
    progress: Callable[[str], None] | None = None,
) -> BuildResult:
    """Evaluate, train, index and write one version of `log` into `store` (a folder, or
    any `ArtifactStore`: written to its staging folder, then uploaded).

        When the log is too small for the evaluation split (no test users), the version is
        written without figures (noted in `notes`); the gate then refuses to publish it over a
        version that has figures, unless forced. Raises `EmptyDataError` when nothing can be
        trained, and the `ArtifactError`s of `publish`. A refused publication is not an error:
        `result.refused` says why. `progress`, when given, is called with each of `STAGES`
        as it starts ("publishing" only when asked to publish).
    """
    stage = progress or (lambda _: None)
    if isinstance(store, Path):
        store = LocalStore(store)
    params = params or ModelParams()
    notes: list[str] = []
    evaluation: dict[str, Any] = {}
    started = time.perf_counter()
    stage(STAGES[0])
    try:
        result = evaluate_models(log, params, BaselineParams(), catalog=catalog)
        evaluation = result.as_dict()
        evaluation["served"] = result.metrics[SERVED]
    except EmptyDataError as exc:
        notes.append(f"evaluation skipped: {exc}")
    eval_s = time.perf_counter() - started
    started = time.perf_counter()
    stage(STAGES[1])
    model = train_model(log, params, catalog=catalog)
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    stage(STAGES[2])
    version, spec = save_model(
        store.staging,
        model,
        build=build or BuildParams(),
        evaluation=evaluation,
        catalog=catalog,
        extra={"timings_s": {"evaluation": eval_s, "training": train_s}},
    )
    write_s = time.perf_counter() - started
    started = time.perf_counter()
    stage(STAGES[3])
    store.upload(version)
    seconds = {
        "evaluation": eval_s,
        "training": train_s,
        "index_and_write": write_s,
        "upload": time.perf_counter() - started,
    }
    out = BuildResult(
        store=str(store),
        version=version,
        index=spec,
        counts=dict(model.counts),
        evaluation=evaluation,
        seconds=seconds,
        notes=notes,
    )
    if publish_it:
        stage(STAGES[4])
        try:
            out.published = store.publish(version, force=force, max_drop=max_drop)
        except QualityGateError as exc:
            out.refused = str(exc)
    return out
