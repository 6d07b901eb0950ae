"""Versions on a real S3-compatible server (SeaweedFS, started by the fixtures): publish
from one host, pull into other hosts' caches, refuse a corrupt upload until it is
published again, never mistake an unfinished upload for a bad one, prune."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from indexing import (
    ArtifactNotFoundError,
    ChecksumError,
    ModelParams,
    RemoteStore,
    TrainedModel,
    list_versions,
    load_index,
    open_store,
    read_events,
    save_model,
    train_model,
    verify_artifact,
)
from indexing.store import MANIFEST_FILE
from tests.indexing.conftest import planted_rows


@pytest.fixture(scope="module")
def model() -> TrainedModel:
    log, _ = read_events(planted_rows())
    return train_model(log, ModelParams())


def remote(url: str, endpoint: str, cache: Path, keep: int = 2) -> RemoteStore:
    store = open_store(url, cache, endpoint_url=endpoint, keep_cached=keep)
    assert isinstance(store, RemoteStore)
    return store


def built(store: RemoteStore, model: TrainedModel, publish: bool = True) -> str:
    version, _ = save_model(store.staging, model)
    store.upload(version)
    if publish:
        store.publish(version, force=True)
    return version


def test_a_version_published_from_one_host_loads_on_two_others(
    s3_store_url: str, s3_endpoint: str, tmp_path: Path, model: TrainedModel
) -> None:
    builder = remote(s3_store_url, s3_endpoint, tmp_path / "builder")
    version = built(builder, model)
    for host in ("a", "b"):
        store = remote(s3_store_url, s3_endpoint, tmp_path / host)
        assert store.current_version() == version
        fetched = store.fetch(version)
        assert fetched.folder == tmp_path / host and fetched.downloaded_bytes > 0
        index = load_index(fetched.folder, version, verify=False)
        assert len(index) == 48
        assert all(i.startswith("b1-") for i, _ in index.similar(["b1-3"], k=5)[0])
        assert store.fetch(version).downloaded_bytes == 0  # cached: not downloaded again
    assert store.read_manifest(version)["version"] == version


def test_a_corrupt_upload_is_refused_and_served_once_published_again(
    s3_store_url: str, s3_endpoint: str, tmp_path: Path, model: TrainedModel
) -> None:
    builder = remote(s3_store_url, s3_endpoint, tmp_path / "builder")
    version = built(builder, model, publish=False)
    good = (builder.cache / version / "factors.npy").read_bytes()
    key = builder.where.key(version, "factors.npy")
    builder.objects.put_bytes(key, good[:-8] + b"\0" * 8)  # same size, other bytes
    host = remote(s3_store_url, s3_endpoint, tmp_path / "host")
    refused_marker = host.marker(version)
    with pytest.raises(ChecksumError, match=r"factors\.npy sha256"):
        host.fetch(version)
    assert list_versions(host.cache) == [] and not list(host.cache.glob(".tmp-*"))

    builder.objects.put_bytes(key, good)  # published again, correctly
    assert host.marker(version) != refused_marker
    assert host.fetch(version).downloaded_bytes > 0
    verify_artifact(host.cache, version)


def test_an_unfinished_upload_reads_as_not_found_never_as_bad(
    s3_store_url: str, s3_endpoint: str, tmp_path: Path, model: TrainedModel
) -> None:
    builder = remote(s3_store_url, s3_endpoint, tmp_path / "builder")
    version, _ = save_model(builder.staging, model)
    folder = builder.cache / version
    for path in sorted(folder.iterdir())[:3]:  # some files, no manifest yet
        if path.name != MANIFEST_FILE:
            builder.objects.upload(path, builder.where.key(version, path.name))
    host = remote(s3_store_url, s3_endpoint, tmp_path / "host")
    with pytest.raises(ArtifactNotFoundError):
        host.fetch(version)
    builder.upload(version)
    assert host.fetch(version).downloaded_bytes > 0


def test_concurrent_pulls_on_one_host_download_once(
    s3_store_url: str, s3_endpoint: str, tmp_path: Path, model: TrainedModel
) -> None:
    builder = remote(s3_store_url, s3_endpoint, tmp_path / "builder")
    version = built(builder, model)
    cache = tmp_path / "host"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PUSHREC_")},
        "PUSHREC_STATE_DIR": str(tmp_path / "state"),
        "PUSHREC_INDEX_STORE": s3_store_url,
        "PUSHREC_INDEX_CACHE": str(cache),
        "PUSHREC_S3_ENDPOINT_URL": s3_endpoint,
    }
    pulls = [
        subprocess.Popen(
            [sys.executable, "-m", "worker", "index", "pull"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    outputs = []
    for pull in pulls:
        out, err = pull.communicate(timeout=90)
        assert pull.returncode == 0, err.decode()
        outputs.append(json.loads(out))
    assert {o["version"] for o in outputs} == {version}
    assert {o["items"] for o in outputs} == {48}
    assert sorted(o["downloaded_bytes"] > 0 for o in outputs) == [False, False, False, True]
    assert list_versions(cache) == [version] and not list(cache.glob(".tmp-*"))
    verify_artifact(cache, version)


def test_the_cache_keeps_the_newest_versions_and_the_bucket_keeps_the_current(
    s3_store_url: str, s3_endpoint: str, tmp_path: Path, model: TrainedModel
) -> None:
    builder = remote(s3_store_url, s3_endpoint, tmp_path / "builder")
    host = remote(s3_store_url, s3_endpoint, tmp_path / "host", keep=2)
    versions = [built(builder, model, publish=False) for _ in range(4)]
    builder.publish(versions[1], force=True)  # an older one is current
    for version in versions:
        host.fetch(version)
    assert list_versions(host.cache) == versions[2:]
    host.fetch(versions[0])  # fetched again: kept, as the newest of the rest
    assert list_versions(host.cache) == [versions[0], versions[3]]

    assert builder.prune(keep=1, spare={versions[2]}) == [versions[0]]
    assert builder.prune(keep=1) == [versions[2]]
    assert builder.current_version() == versions[1]
    remaining = {o.key.split("/")[-2] for o in builder.objects.listing(builder.where.key(""))
                 if o.key.endswith(MANIFEST_FILE)}  # fmt: skip
    assert remaining == {versions[1], versions[3]}
    with pytest.raises(ArtifactNotFoundError):
        remote(s3_store_url, s3_endpoint, tmp_path / "late").fetch(versions[0])
