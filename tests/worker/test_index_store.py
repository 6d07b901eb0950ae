"""Workers on several hosts serve one index from object storage (a real SeaweedFS): each
host pulls the published version into its own cache; a version not uploaded yet is retried,
a corrupt one refused until it is published again."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from indexing import ModelParams, RemoteStore, read_events, save_model, train_model
from indexing.store import MANIFEST_FILE
from tests.indexing.conftest import planted_rows
from tests.worker.conftest import WorkerProcess, wait_for
from tests.worker.realtime import Gateways, register, rule, seed_shop, write_config
from worker.client import PushrecClient
from worker.firing.index_holder import IndexHolder
from worker.firing.index_store import open_index_store
from worker.service.runtime import Runtime
from worker.settings import Settings

pytestmark = pytest.mark.object_store  # see .ci/run: not under a shifted clock


def host(settings: Settings, url: str, endpoint: str, cache: Path) -> Settings:
    """The settings of one host: the shared store, its own cache folder."""
    return settings.model_copy(
        update={"index_store": url, "s3_endpoint_url": endpoint, "index_cache": cache}
    )


def write_version(settings: Settings, seed: int = 0) -> tuple[RemoteStore, str]:
    """A planted version written to the builder's cache, not uploaded yet."""
    store = open_index_store(settings)
    assert isinstance(store, RemoteStore)
    log, _ = read_events(planted_rows(seed))
    version, _ = save_model(store.staging, train_model(log, ModelParams()))
    return store, version


def test_two_hosts_serve_the_version_published_to_the_object_store(
    settings: Settings, runtime: Runtime, s3_store_url: str, s3_endpoint: str, tmp_path: Path
) -> None:
    builder, version = write_version(host(settings, s3_store_url, s3_endpoint, tmp_path / "b"))
    builder.upload(version)
    builder.publish(version, force=True)
    runtime.redis.set(runtime.keys.index_version, version)
    holders = [
        IndexHolder(
            open_index_store(host(settings, s3_store_url, s3_endpoint, tmp_path / name)),
            runtime.redis,
            runtime.keys,
        )
        for name in ("host1", "host2")
    ]
    for holder in holders:
        holder.load_now()
        assert holder.version == version and holder.index is not None
    assert (tmp_path / "host1" / version / MANIFEST_FILE).exists()
    assert (tmp_path / "host2" / version / MANIFEST_FILE).exists()


def test_a_version_still_uploading_is_retried_then_served(
    settings: Settings, runtime: Runtime, s3_store_url: str, s3_endpoint: str, tmp_path: Path
) -> None:
    builder, version = write_version(host(settings, s3_store_url, s3_endpoint, tmp_path / "b"))
    runtime.redis.set(runtime.keys.index_version, version)  # pointer ahead of the upload
    holder = IndexHolder(
        open_index_store(host(settings, s3_store_url, s3_endpoint, tmp_path / "h")),
        runtime.redis,
        runtime.keys,
    )
    holder.load_now()
    assert holder.version is None and not holder.refused(version)
    builder.upload(version)
    holder.between_tasks(now=1e12)  # past any backoff
    holder.wait_loaded()
    assert holder.version == version


def test_a_corrupt_version_is_refused_and_served_once_published_again(
    settings: Settings, runtime: Runtime, s3_store_url: str, s3_endpoint: str, tmp_path: Path
) -> None:
    builder, version = write_version(host(settings, s3_store_url, s3_endpoint, tmp_path / "b"))
    builder.upload(version)
    key = builder.where.key(version, "norms.npy")
    good = (builder.cache / version / "norms.npy").read_bytes()
    builder.objects.put_bytes(key, good[:-4] + b"\xff\xff\xff\xff")
    runtime.redis.set(runtime.keys.index_version, version)
    holder = IndexHolder(
        open_index_store(host(settings, s3_store_url, s3_endpoint, tmp_path / "h")),
        runtime.redis,
        runtime.keys,
    )
    holder.load_now()
    assert holder.version is None and holder.refused(version)
    holder.between_tasks(now=1e12)
    holder.wait_loaded()
    assert holder.version is None and holder.refused(version)  # the same files: no retry

    builder.objects.put_bytes(key, good)
    holder.between_tasks(now=2e12)
    holder.wait_loaded()
    assert holder.version == version and not holder.refused(version)


@pytest.mark.integration
def test_a_worker_process_serves_the_index_from_the_object_store(
    settings: Settings,
    s3_store_url: str,
    s3_endpoint: str,
    tmp_path: Path,
    gateways: Gateways,
    client: PushrecClient,
) -> None:
    gateways.reset()
    builder, version = write_version(host(settings, s3_store_url, s3_endpoint, tmp_path / "b"))
    builder.upload(version)
    builder.publish(version, force=True)  # the store's `current`: no Redis pointer needed
    config = write_config(
        tmp_path / "pushrec.toml",
        [rule("cross_sell", "post_purchase", delay_s=0, items=3)],
        cap_marketing_per_day=100,
        cap_total_per_day=100,
    )
    cache = tmp_path / "worker-host"
    env = {
        **gateways.env,
        "PUSHREC_CONFIG": str(config),
        "PUSHREC_INDEX_STORE": s3_store_url,
        "PUSHREC_INDEX_CACHE": str(cache),
        "PUSHREC_S3_ENDPOINT_URL": s3_endpoint,
    }
    rt = Runtime.open(settings)
    worker = None
    try:
        seed_shop(rt, time.time())
        token = f"{gateways.targets['fcm']}-s3"
        register(rt, "u2-1", "fcm", token, time.time())
        worker = WorkerProcess(settings, tmp_path / "worker.log", "s3w", 1, env=env)
        client.track(
            {"event_id": "s3-p1", "user_id": "u2-1", "type": "purchase", "item_id": "b2-4",
             "ts": time.time()}
        )  # fmt: skip
        wait_for(lambda: gateways.accepted("fcm"), timeout=60, what="a push")
        [row] = [r for r in gateways.accepted("fcm") if r["message"].get("token") == token]
        items = row["message"]["data"]["items"].split(",")
        assert items[0].startswith("b2-"), items  # the bought item's block, by the index
        assert f"serving index {version}" in worker.log()
        assert (cache / version / MANIFEST_FILE).exists()
        assert not worker.errors(), worker.log()[-3000:]
    finally:
        if worker is not None:
            worker.stop()
        rt.close()
