"""Versions on an object store, pulled into a verified cache folder on each host.

Object layout under `s3://bucket/prefix/` (the local store's, as keys)::

    current                    text: the published version (one PUT replaces it)
    <version>/<file>           every file of the version, uploaded first
    <version>/manifest.json    uploaded last: a version without it is not finished

The cache folder on a host has the local layout (`<cache>/<version>/`), so a worker
memory-maps a cached version as it would a local one. `fetch` takes the host's lock
(`<cache>/.lock`, `flock`): the first process downloads into `<cache>/.tmp-<version>-<pid>/`,
checks every size and sha256 against the manifest, and renames the folder into place; the
processes that waited find it there and only check sizes. A version that fails its checks is
deleted from the temp folder and never enters the cache. A process killed mid-download
releases the lock with its death and leaves a temp folder the next download of that version
removes. After a download the cache keeps the newest `keep_cached` versions (the one just
fetched always); a process still serving an older one keeps its mapped pages (unlinked
files stay readable on POSIX).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexing.errors import ArtifactError, ArtifactNotFoundError
from indexing.s3 import S3Location, S3Objects
from indexing.store import (
    CURRENT_FILE,
    DEFAULT_MAX_DROP,
    MANIFEST_FILE,
    GateDecision,
    gate,
    is_version_name,
    list_versions,
    parse_manifest,
    prunable,
    verify_artifact,
)

__all__ = ["DEFAULT_KEEP_CACHED", "Fetched", "RemoteStore"]

DEFAULT_KEEP_CACHED = 2
_LOCK_FILE = ".lock"


@dataclass(frozen=True)
class Fetched:
    """What `fetch` gave: the local folder holding the version (`load_index(folder,
    version, verify=False)`) and the bytes this call downloaded (0: it was there already)."""

    folder: Path
    downloaded_bytes: int


class RemoteStore:
    """An `ArtifactStore` on S3-compatible object storage with a local cache folder."""

    def __init__(
        self,
        objects: S3Objects,
        where: S3Location,
        cache: Path,
        keep_cached: int = DEFAULT_KEEP_CACHED,
    ) -> None:
        if keep_cached < 1:
            raise ValueError("keep_cached must be at least 1")
        self.objects = objects
        self.where = where
        self.cache = cache
        self.keep_cached = keep_cached

    def __str__(self) -> str:
        return str(self.where)

    @property
    def staging(self) -> Path:
        """Builds are written into the cache: the building host need not download them."""
        return self.cache

    # --- writing -----------------------------------------------------------------------
    def upload(self, version: str) -> None:
        """Upload every file of a version written to the cache, then its manifest: a reader
        that finds the manifest finds every file (on a store with read-after-write
        consistency; elsewhere a missing file reads as not found, and is retried). The
        cache then keeps the newest versions, as after a fetch."""
        manifest = verify_artifact(self.cache, version, checksums=False)
        folder = self.cache / version
        for name in sorted(manifest["files"]):
            self.objects.upload(folder / name, self.where.key(version, name))
        self.objects.upload(folder / MANIFEST_FILE, self.where.key(version, MANIFEST_FILE))
        with self._host_lock():
            self._prune_cache(version)

    def publish(
        self, version: str, *, force: bool = False, max_drop: float = DEFAULT_MAX_DROP
    ) -> GateDecision:
        """Flip `current` to an uploaded version through the quality gate (the manifests
        compared are read back from the store)."""
        manifest = self.read_manifest(version)
        previous: str | None
        try:
            previous = self.current_version()
        except ArtifactNotFoundError:
            previous = None
        previous_manifest: dict[str, Any] | None = None
        if previous is not None and previous != version:
            with contextlib.suppress(ArtifactError):
                previous_manifest = self.read_manifest(previous)
        decision = gate(
            version, manifest, previous, previous_manifest, force=force, max_drop=max_drop
        )
        self.objects.put_bytes(self.where.key(CURRENT_FILE), (version + "\n").encode())
        return decision

    def prune(self, keep: int, spare: Collection[str] = ()) -> list[str]:
        """Delete all but the `keep` newest versions from the bucket, never the current one
        nor any in `spare`. Versions still uploading (no manifest yet) are left alone."""
        try:
            spared = {self.current_version(), *spare}
        except ArtifactNotFoundError:
            spared = set(spare)
        doomed = prunable(self._versions(), keep, spared)
        for version in doomed:
            keys = [o.key for o in self.objects.listing(self.where.key(version) + "/")]
            # the manifest first: a reader meeting the rest half-deleted sees "not finished"
            manifest = self.where.key(version, MANIFEST_FILE)
            self.objects.delete([manifest])
            self.objects.delete([k for k in keys if k != manifest])
        return doomed

    def _versions(self) -> list[str]:
        start = len(self.where.key("x")) - 1
        names = {
            obj.key[start:].split("/")[0]
            for obj in self.objects.listing(self.where.key(""))
            if obj.key.endswith("/" + MANIFEST_FILE)
        }
        return sorted(n for n in names if is_version_name(n))

    # --- reading -----------------------------------------------------------------------
    def current_version(self) -> str:
        raw = self.objects.get_bytes(self.where.key(CURRENT_FILE))
        name = raw.decode("utf-8", errors="replace").strip()
        if not is_version_name(name):
            raise ArtifactNotFoundError(f"{self.where}/{CURRENT_FILE} holds no valid version")
        return name

    def read_manifest(self, version: str) -> dict[str, Any]:
        raw = self.objects.get_bytes(self.where.key(version, MANIFEST_FILE))
        return parse_manifest(raw, version, f"{self.where}/{version}")

    def marker(self, version: str) -> str:
        listed = self.objects.listing(self.where.key(version) + "/")
        if not listed:
            raise ArtifactNotFoundError(f"no version {version!r} in {self.where}")
        digest = hashlib.sha256()
        for obj in listed:
            digest.update(f"{obj.key}\0{obj.etag}\0{obj.size}\n".encode())
        return digest.hexdigest()

    def fetch(self, version: str) -> Fetched:
        """The cache folder, holding `version` verified: downloaded by this call, or by
        another process of this host before it (see the module docstring).

        Raises `ArtifactNotFoundError` / `StoreUnavailableError` (not uploaded yet, store
        away: try again later), `ManifestError` / `ChecksumError` (a bad version)."""
        if not is_version_name(version):
            raise ArtifactNotFoundError(f"{version!r} is not a version name")
        with self._host_lock():
            folder = self.cache / version
            if folder.is_dir():
                try:
                    verify_artifact(self.cache, version, checksums=False)
                    return Fetched(self.cache, 0)
                except ArtifactError:
                    shutil.rmtree(folder)  # damaged after download: fetch it again
            size = self._download(version)
            self._prune_cache(version)
        return Fetched(self.cache, size)

    def _download(self, version: str) -> int:
        for stale in self.cache.glob(f".tmp-{version}-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed process
        tmp_root = self.cache / f".tmp-{version}-{os.getpid()}"
        tmp = tmp_root / version
        tmp.mkdir(parents=True)
        try:
            raw = self.objects.get_bytes(self.where.key(version, MANIFEST_FILE))
            manifest = parse_manifest(raw, version, f"{self.where}/{version}")
            for name in sorted(manifest["files"]):
                self.objects.download(self.where.key(version, name), tmp / name)
            (tmp / MANIFEST_FILE).write_bytes(raw)
            verify_artifact(tmp_root, version)
            os.replace(tmp, self.cache / version)
            return len(raw) + sum(int(meta["bytes"]) for meta in manifest["files"].values())
        finally:
            shutil.rmtree(tmp_root, ignore_errors=True)

    def _prune_cache(self, fetched: str) -> None:
        versions = [v for v in list_versions(self.cache) if v != fetched]
        for version in versions[: max(len(versions) - (self.keep_cached - 1), 0)]:
            shutil.rmtree(self.cache / version, ignore_errors=True)

    @contextlib.contextmanager
    def _host_lock(self) -> Iterator[None]:
        self.cache.mkdir(parents=True, exist_ok=True)
        with open(self.cache / _LOCK_FILE, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # released on close, or when we die
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
