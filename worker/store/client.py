"""The one place that builds the state store's Redis clients: a single node
(`redis://`, `rediss://`, `unix://`) or a Redis Cluster
(`redis+cluster://[user:password@]host:port[,host:port...]`, `rediss+cluster://` with TLS).

On a cluster every command, pipeline-with-transaction and Lua script must stay in one
hash slot (keys.py says how each key family does). MOVED and ASK redirects are followed
by redis-py's `RedisCluster` itself (a redirected command was not applied); connection
errors are not retried here, for the reason `connect_state` gives.
"""

from __future__ import annotations

from typing import Any, TypeAlias
from urllib.parse import SplitResult, unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.retry import Retry

__all__ = [
    "CLUSTER_SCHEMES",
    "AsyncStateRedis",
    "StatePipeline",
    "StateRedis",
    "cluster_nodes",
    "connect_state",
    "connect_state_async",
    "is_cluster_url",
]

StateRedis: TypeAlias = redis.Redis | RedisCluster
StatePipeline: TypeAlias = redis.client.Pipeline | ClusterPipeline
AsyncStateRedis: TypeAlias = aioredis.Redis | AsyncRedisCluster

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The (host, port) seed nodes a cluster URL names; ValueError naming the bad one."""
    parts = _split(url)
    hosts = parts.netloc.rpartition("@")[2]
    nodes: list[tuple[str, int]] = []
    for entry in hosts.split(","):
        host, sep, port = entry.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"cluster node {entry!r}: expected host:port")
        nodes.append((host.strip("[]"), int(port)))
    return nodes


def _split(url: str) -> SplitResult:
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"not a cluster URL (scheme {parts.scheme!r})")
    return parts


def _cluster_options(url: str) -> dict[str, Any]:
    parts = _split(url)
    user, _, password = parts.netloc.rpartition("@")[0].partition(":")
    options: dict[str, Any] = {"ssl": CLUSTER_SCHEMES[parts.scheme]}
    if user:
        options["username"] = unquote(user)
    if password:
        options["password"] = unquote(password)
    return options


# Shared by both kinds of client (see connect_state).
_CLIENT_OPTIONS: dict[str, Any] = {
    "decode_responses": True,
    "socket_timeout": 10,
    "socket_connect_timeout": 5,
}


def connect_state(url: str) -> StateRedis:
    """A pooled client for `url` that does not retry by itself.

    Retries happen at the task level, where every write is decided once (event ids,
    message ids); a client-level retry would re-send a whole pipeline whose first send
    may have been applied, counting its counters twice (seen in the Redis restart test).
    A cluster client still follows MOVED/ASK and waits out TRYAGAIN (the command was not
    applied); after a connection error it re-reads the slot map on its next call.
    """
    no_retry = Retry(NoBackoff(), retries=0)
    if not is_cluster_url(url):
        return redis.Redis.from_url(
            url, health_check_interval=30, retry=no_retry, **_CLIENT_OPTIONS
        )
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_nodes(url)],  # type: ignore[no-untyped-call]
        retry=no_retry,
        **_cluster_options(url),
        **_CLIENT_OPTIONS,
    )


def connect_state_async(url: str) -> AsyncStateRedis:
    """An asyncio client for `url` (the push runtime's shared breaker, rate limit and
    tokens); its owner closes it (`aclose`)."""
    if not is_cluster_url(url):
        return aioredis.Redis.from_url(url, decode_responses=True)
    return AsyncRedisCluster(
        startup_nodes=[AsyncClusterNode(host, port) for host, port in cluster_nodes(url)],
        **_cluster_options(url),
        decode_responses=True,
    )
