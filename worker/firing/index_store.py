"""The index store the settings name: a local folder or an object store with this host's
cache (`indexing.stores`), and the Redis pointer to the version workers serve. The worker
only chooses; `indexing` does the work."""

from __future__ import annotations

from indexing import ArtifactStore, open_store
from worker.settings import Settings
from worker.store.client import StateRedis
from worker.store.keys import Keys


def open_index_store(settings: Settings, location: str | None = None) -> ArtifactStore:
    """The store at `location` (default: the settings' `index_store`), with the settings'
    cache folder, endpoint and region. Raises `MissingDependencyError` when an s3:// store
    is named and boto3 is not installed, ValueError for a malformed URL."""
    return open_store(
        location or settings.index_store_location,
        settings.index_cache_dir,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        keep_cached=settings.index_cache_keep,
    )


def point_workers_at(client: StateRedis, keys: Keys, version: str) -> None:
    """Make `version` the one every worker serves: the Redis pointer, which workers
    follow before the store's `current` (`index_holder.py`). Set after a publish."""
    client.set(keys.index_version, version)
