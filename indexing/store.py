"""Versioned, self-checking artifacts in a store folder.

Layout::

    <store>/
      current                 text: the published version name (replaced atomically)
      <version>/              one complete build, never modified after the rename
        manifest.json         format, created, parameters, dimension, metric, counts,
                              evaluation figures, index recall, sha256 + size per file
        index.faiss           FAISS index (row i = item_ids[i])
        item_ids.npy          <U (n,) item ids
        *.npy                 arrays named in the manifest (vectors, norms, ...)
      .tmp-<version>-<pid>/   a build being written; renamed into place when complete

Readers call `verify_artifact` (manifest + every file's size and sha256) before using a
version; any mismatch raises an `ArtifactError` subclass and the caller keeps its old index.
`publish` flips `current` after the quality gate; a version is only readable once renamed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from indexing.errors import (
    ArtifactNotFoundError,
    ChecksumError,
    ManifestError,
    QualityGateError,
)

__all__ = [
    "CURRENT_FILE",
    "DEFAULT_MAX_DROP",
    "FORMAT_VERSION",
    "GATE_Z",
    "INDEX_FILE",
    "MANIFEST_FILE",
    "GateDecision",
    "GateFigure",
    "current_version",
    "gate",
    "is_version_name",
    "list_versions",
    "parse_manifest",
    "prunable",
    "prune_versions",
    "publish",
    "read_manifest",
    "regression",
    "verify_artifact",
    "write_artifact",
]

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
INDEX_FILE = "index.faiss"
CURRENT_FILE = "current"
_CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _new_version(store: Path) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    name, n = stamp, 1
    while (store / name).exists():
        n += 1
        name = f"{stamp}-{n}"
    return name


def write_artifact(
    store: Path,
    index: faiss.Index,
    arrays: Mapping[str, npt.NDArray[Any]],
    manifest: Mapping[str, Any],
) -> str:
    """Write a complete version folder and return its name (not yet published).

    arrays: name -> array, each saved as `<name>.npy` (no pickles: object arrays are
    refused by numpy's `allow_pickle=False` on load). manifest: caller fields (parameters,
    counts, evaluation, index); this function adds format_version, version, created, files.
    The folder appears under its final name only once every file is written and synced.
    """
    store.mkdir(parents=True, exist_ok=True)
    version = _new_version(store)
    tmp = store / f".tmp-{version}-{os.getpid()}"
    tmp.mkdir()
    try:
        files: dict[str, dict[str, object]] = {}
        faiss.write_index(index, str(tmp / INDEX_FILE))
        for name, array in arrays.items():
            if array.dtype == object:
                raise ValueError(f"array {name!r} has dtype object; store fixed-width types")
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        for path in sorted(tmp.iterdir()):
            files[path.name] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
        full = dict(manifest)
        full.update(
            format_version=FORMAT_VERSION,
            version=version,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            files=files,
            arrays=sorted(arrays),
        )
        (tmp / MANIFEST_FILE).write_text(json.dumps(full, indent=2, sort_keys=True, default=str))
        for path in tmp.iterdir():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, store / version)
        _fsync_dir(store)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return version


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prunable(versions: list[str], keep: int, spared: Collection[str]) -> list[str]:
    """Of `versions` (oldest first), those beyond the `keep` newest that are not `spared`."""
    if keep < 0:
        raise ValueError("keep must be 0 or more")
    return [v for v in versions[: max(len(versions) - keep, 0)] if v not in spared]


def prune_versions(store: Path, keep: int = 3, spare: Collection[str] = ()) -> list[str]:
    """Delete all but the `keep` newest versions, never the current one nor any in
    `spare` (what a reader may still load); return the deleted names. Folders of builds
    still being written (`.tmp-*`) are left alone."""
    try:
        spared = {current_version(store), *spare}
    except ArtifactNotFoundError:
        spared = set(spare)
    doomed = prunable(list_versions(store), keep, spared)
    for name in doomed:
        shutil.rmtree(store / name)
    return doomed


def list_versions(store: Path) -> list[str]:
    """Complete version folders in the store, oldest first."""
    if not store.is_dir():
        return []
    return sorted(
        p.name
        for p in store.iterdir()
        if p.is_dir() and (p / MANIFEST_FILE).exists() and not p.name.startswith(".")
    )


def current_version(store: Path) -> str:
    """The published version name (cheap: one small file read).

    Raises `ArtifactNotFoundError` when nothing is published.
    """
    try:
        name = (store / CURRENT_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError as exc:
        raise ArtifactNotFoundError(f"no published version in {store}") from exc
    except OSError as exc:
        raise ArtifactNotFoundError(f"cannot read {store / CURRENT_FILE}: {exc}") from exc
    if not is_version_name(name):
        raise ArtifactNotFoundError(f"{store / CURRENT_FILE} holds no valid version name")
    return name


def is_version_name(name: str) -> bool:
    """Whether `name` may name a version folder (no path separator, not hidden)."""
    return bool(name) and "/" not in name and not name.startswith(".") and name == name.strip()


def read_manifest(store: Path, version: str) -> dict[str, Any]:
    """The parsed manifest of `version`, format-checked but without file checksums."""
    folder = store / version
    if not folder.is_dir():
        raise ArtifactNotFoundError(f"no version {version!r} in {store}")
    try:
        raw = (folder / MANIFEST_FILE).read_bytes()
    except FileNotFoundError as exc:
        raise ManifestError(f"{folder} has no {MANIFEST_FILE}") from exc
    except OSError as exc:
        raise ManifestError(f"unreadable manifest in {folder}: {exc}") from exc
    return parse_manifest(raw, version, str(folder))


def parse_manifest(raw: bytes, version: str, where: str) -> dict[str, Any]:
    """Parse and format-check the manifest bytes of `version` (`where` names it in errors).

    Raises `ManifestError` when it is not JSON, of another format, names another version or
    lists no index file.
    """
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise ManifestError(f"unreadable manifest in {where}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ManifestError(f"manifest of {where} is not an object")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ManifestError(
            f"{where}: format_version {manifest.get('format_version')!r}, "
            f"this code reads {FORMAT_VERSION}"
        )
    if manifest.get("version") != version:
        raise ManifestError(f"{where}: manifest names version {manifest.get('version')!r}")
    if not isinstance(manifest.get("files"), dict) or INDEX_FILE not in manifest["files"]:
        raise ManifestError(f"{where}: manifest lists no {INDEX_FILE}")
    if not all(is_version_name(name) for name in manifest["files"]):
        raise ManifestError(f"{where}: manifest lists a file name with a path in it")
    return manifest


def verify_artifact(store: Path, version: str, *, checksums: bool = True) -> dict[str, Any]:
    """Read the manifest and check every listed file's size (and sha256 unless
    `checksums=False`); also refuse unlisted files. Returns the manifest.

    Raises `ArtifactNotFoundError`, `ManifestError` or `ChecksumError`.
    """
    manifest = read_manifest(store, version)
    folder = store / version
    listed: dict[str, dict[str, Any]] = manifest["files"]
    present = {p.name for p in folder.iterdir()} - {MANIFEST_FILE}
    extra = present - set(listed)
    if extra:
        raise ManifestError(f"{folder}: files not in the manifest: {sorted(extra)}")
    for name, meta in listed.items():
        path = folder / name
        if not path.is_file():
            raise ChecksumError(f"{folder}: {name} is missing")
        if path.stat().st_size != meta.get("bytes"):
            raise ChecksumError(
                f"{folder}: {name} has {path.stat().st_size} bytes, manifest says "
                f"{meta.get('bytes')} (truncated or replaced)"
            )
        if checksums and _sha256(path) != meta.get("sha256"):
            raise ChecksumError(f"{folder}: {name} sha256 differs from the manifest (corrupt)")
    return manifest


class GateDecision(dict[str, Any]):
    """What `publish` decided: version, previous, recall values, forced (a plain dict)."""


DEFAULT_MAX_DROP = 0.05
# How many standard errors of the difference a drop must exceed: two builds are evaluated
# on different test periods, so their recall differs by chance (bench/gate.py measures
# how much, and that broken builds stay far beyond this).
GATE_Z = 2.0


@dataclass(frozen=True)
class GateFigure:
    """A version's served recall@10 and its standard error, from its manifest."""

    recall: float
    se: float | None  # absent in manifests written before it was recorded

    @classmethod
    def of(cls, manifest: Mapping[str, Any]) -> GateFigure | None:
        served = manifest.get("evaluation", {}).get("served", {})
        recall, se = served.get("recall@10"), served.get("recall@10_se")
        if not isinstance(recall, int | float):
            return None
        return cls(float(recall), float(se) if isinstance(se, int | float) else None)


def regression(
    new: GateFigure | None, old: GateFigure, max_drop: float = DEFAULT_MAX_DROP
) -> str | None:
    """Why `new` is worse than `old` beyond `max_drop` and beyond chance, or None."""
    if new is None:
        return "has no evaluation figures"
    if new.recall >= old.recall * (1.0 - max_drop):
        return None
    noise = math.hypot(new.se, old.se) if new.se is not None and old.se is not None else 0.0
    if noise > 0:
        if old.recall - new.recall <= GATE_Z * noise:
            return None
        return (
            f"recall@10 {new.recall:.4f} is more than {max_drop:.0%} and "
            f"{(old.recall - new.recall) / noise:.1f} standard errors below"
        )
    return f"recall@10 {new.recall:.4f} is more than {max_drop:.0%} below"


def gate(
    version: str,
    manifest: Mapping[str, Any],
    previous: str | None,
    previous_manifest: Mapping[str, Any] | None,
    *,
    force: bool = False,
    max_drop: float = DEFAULT_MAX_DROP,
) -> GateDecision:
    """The quality gate, apart from any store: may `version` (its `manifest`) replace
    `previous` (None: nothing published; `previous_manifest` None: unreadable)?

    Raises `QualityGateError` when its evaluation recall@10 is more than `max_drop`
    (relative) below the previous one's and the drop is beyond chance (`GATE_Z` standard
    errors of the difference), unless `force`. Returns the decision to record.
    """
    new_figure = GateFigure.of(manifest)
    old_figure: GateFigure | None = None
    if previous is not None and previous != version and previous_manifest is not None:
        old_figure = GateFigure.of(previous_manifest)
    if not force and old_figure is not None:
        why = regression(new_figure, old_figure, max_drop)
        if why is not None:
            raise QualityGateError(
                f"{version}: {why} the current {previous} ({old_figure.recall:.4f}); "
                "not published (use force to override)"
            )
    return GateDecision(
        version=version,
        previous=previous,
        recall=new_figure.recall if new_figure else None,
        previous_recall=old_figure.recall if old_figure else None,
        forced=force,
    )


def publish(
    store: Path, version: str, *, force: bool = False, max_drop: float = DEFAULT_MAX_DROP
) -> GateDecision:
    """Verify `version` and make it current if it passes the quality `gate`.

    The pointer is written to a temp file and renamed over `current` (atomic on POSIX).
    Raises `QualityGateError` when refused, `ArtifactError`s when the build is unreadable.
    """
    manifest = verify_artifact(store, version)
    previous: str | None
    try:
        previous = current_version(store)
    except ArtifactNotFoundError:
        previous = None
    previous_manifest: dict[str, Any] | None = None
    if previous is not None and previous != version:
        try:
            previous_manifest = read_manifest(store, previous)
        except (ArtifactNotFoundError, ManifestError):
            previous_manifest = None
    decision = gate(version, manifest, previous, previous_manifest, force=force, max_drop=max_drop)
    tmp = store / f".{CURRENT_FILE}.{os.getpid()}.{time.monotonic_ns()}"
    tmp.write_text(version + "\n", encoding="utf-8")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, store / CURRENT_FILE)
    _fsync_dir(store)
    return decision
