"""Fixtures shared by every test package: a real Redis and per-test isolation."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.redis_server import delete_prefix, redis_server


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
