"""Fixtures shared by every test package: a real Redis and per-test isolation.

A test module marked `redis_kinds` runs each of its tests twice: against a single node
(`[node]`) and against a real three-master Redis Cluster (`[cluster]`), through the
`redis_url` fixture; other modules get the single node only."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.redis_cluster import Cluster, redis_cluster
from tests.redis_server import delete_prefix, redis_server

S3_TEST_BUCKET = "pushrec-test"

REDIS_KINDS = ("node", "cluster")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "redis_kinds: run the module's tests on a single Redis and on a cluster"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "redis_url" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "redis_kinds"
    ):
        metafunc.parametrize("redis_url", REDIS_KINDS, indirect=True, scope="session")


@pytest.fixture(scope="session")
def redis_node_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis_cluster_nodes() -> Iterator[Cluster]:
    with redis_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    """The state Redis: the single node, or the cluster in a `redis_kinds` module's
    `[cluster]` tests."""
    if getattr(request, "param", "node") == "cluster":
        cluster: Cluster = request.getfixturevalue("redis_cluster_nodes")
        return cluster.url
    url: str = request.getfixturevalue("redis_node_url")
    return url


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    yield prefix
    delete_prefix(redis_url, prefix)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible server (SeaweedFS) for the session; boto3 finds its test
    credentials in the environment, as worker processes started from here do."""
    from tests.object_store import TEST_CREDENTIALS, seaweedfs_server

    saved = {name: os.environ.get(name) for name in TEST_CREDENTIALS}
    os.environ.update(TEST_CREDENTIALS)
    try:
        with seaweedfs_server() as endpoint:
            yield endpoint
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def s3_store_url(s3_endpoint: str) -> str:
    """`s3://<bucket>/<prefix>` that no other test uses (the bucket exists)."""
    from indexing.s3 import S3Objects

    S3Objects(S3_TEST_BUCKET, endpoint_url=s3_endpoint).create_bucket()
    return f"s3://{S3_TEST_BUCKET}/t{uuid.uuid4().hex[:12]}"
