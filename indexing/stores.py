"""Where versions live: a local folder (one host, or a shared volume) or an object store
(`remote_store.RemoteStore`), behind one small protocol.

Both keep the layout of `store.py` (`<version>/` with its manifest, and `current`); a reader
always loads from a local folder, so `fetch` returns one: the store itself for a local
store, the host's verified cache for an object store. `open_store` picks one from a path or
an `s3://bucket/prefix` URL.

Errors, as the worker's index holder treats them: `ArtifactNotFoundError` and
`StoreUnavailableError` mean "not now" (retry with backoff); `ManifestError` and
`ChecksumError` mean "this version is bad" (refuse it until it is published again, which
changes its `marker`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from pathlib import Path
from typing import Any, Protocol

from indexing.errors import ArtifactNotFoundError
from indexing.remote_store import DEFAULT_KEEP_CACHED, Fetched, RemoteStore
from indexing.s3 import S3Location, S3Objects, is_s3_url
from indexing.store import (
    DEFAULT_MAX_DROP,
    GateDecision,
    current_version,
    prune_versions,
    publish,
    read_manifest,
    verify_artifact,
)

__all__ = ["ArtifactStore", "Fetched", "LocalStore", "open_store"]


class ArtifactStore(Protocol):
    """A versioned artifact store. `staging` is the local folder builds are written to
    (`store.write_artifact`, `artifact.save_model`); `upload` makes a written version
    readable by every host; `publish` makes it current."""

    @property
    def staging(self) -> Path: ...

    def upload(self, version: str) -> None:
        """Copy a version written to `staging` to where readers find it (every file, then
        its manifest)."""

    def publish(
        self, version: str, *, force: bool = False, max_drop: float = DEFAULT_MAX_DROP
    ) -> GateDecision:
        """Flip `current` to an uploaded version through the quality gate."""

    def current_version(self) -> str:
        """The published version; `ArtifactNotFoundError` when none."""

    def read_manifest(self, version: str) -> dict[str, Any]: ...

    def fetch(self, version: str) -> Fetched:
        """A local folder holding `version`, verified (sizes and sha256): load it with
        `load_index(fetched.folder, version, verify=False)`."""

    def marker(self, version: str) -> str:
        """A fingerprint of what the store holds for `version` (names, sizes, etags or
        mtimes): it changes when the version is published again."""

    def prune(self, keep: int, spare: Collection[str] = ()) -> list[str]:
        """Delete all but the `keep` newest versions, never the current one nor any in
        `spare`; return the deleted names."""


class LocalStore:
    """A store folder on this host (or a shared volume): `store.py`'s functions."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __str__(self) -> str:
        return str(self.root)

    @property
    def staging(self) -> Path:
        return self.root

    def upload(self, version: str) -> None:
        verify_artifact(self.root, version, checksums=False)  # written in place already

    def publish(
        self, version: str, *, force: bool = False, max_drop: float = DEFAULT_MAX_DROP
    ) -> GateDecision:
        return publish(self.root, version, force=force, max_drop=max_drop)

    def current_version(self) -> str:
        return current_version(self.root)

    def read_manifest(self, version: str) -> dict[str, Any]:
        return read_manifest(self.root, version)

    def fetch(self, version: str) -> Fetched:
        verify_artifact(self.root, version)
        return Fetched(self.root, 0)

    def marker(self, version: str) -> str:
        folder = self.root / version
        if not folder.is_dir():
            raise ArtifactNotFoundError(f"no version {version!r} in {self.root}")
        digest = hashlib.sha256()
        for path in sorted(folder.iterdir()):
            stat = path.stat()
            digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def prune(self, keep: int, spare: Collection[str] = ()) -> list[str]:
        return prune_versions(self.root, keep, spare)


def open_store(
    location: str | Path,
    cache: Path,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    keep_cached: int = DEFAULT_KEEP_CACHED,
) -> ArtifactStore:
    """A `LocalStore` for a path, a `RemoteStore` (downloading into `cache`, keeping
    `keep_cached` versions there) for an `s3://bucket/prefix` URL. Raises ValueError for a
    malformed URL and `MissingDependencyError` when boto3 is not installed."""
    if isinstance(location, str) and is_s3_url(location):
        where = S3Location.parse(location)
        objects = S3Objects(where.bucket, endpoint_url=endpoint_url, region=region)
        return RemoteStore(objects, where, cache, keep_cached)
    return LocalStore(Path(location))
