"""Fixtures shared by every test package: a real Redis and per-test isolation."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.redis_server import delete_prefix, redis_server

S3_TEST_BUCKET = "pushrec-test"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


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
