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

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.retry import Retry

from worker.redis_urls import cluster_nodes, cluster_options, is_cluster_url
from worker.store.command_packer import PACKER, PackedConnection
from worker.store.pinned import PinnedRedis

__all__ = [
    "AsyncStateRedis",
    "StatePipeline",
    "StateRedis",
    "connect_state",
    "connect_state_async",
    "queued",
    "unqueue_after",
]

StateRedis: TypeAlias = redis.Redis | RedisCluster
StatePipeline: TypeAlias = redis.client.Pipeline | ClusterPipeline
AsyncStateRedis: TypeAlias = aioredis.Redis | AsyncRedisCluster
Queued: TypeAlias = tuple[tuple[Any, ...], dict[str, Any]]  # a command's args and options

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

    Commands are packed by `PACKER` (command_packer.py), except on a TLS cluster, whose
    nodes keep redis-py's packer: no test here runs one. A single node's plain pipelines
    run on a connection pinned to the thread (`PinnedRedis`, pinned.py); a cluster's are
    redis-py's.
    """
    no_retry = Retry(NoBackoff(), retries=0)
    if not is_cluster_url(url):
        return PinnedRedis.from_url(
            url,
            health_check_interval=30,
            retry=no_retry,
            command_packer=PACKER,
            **_CLIENT_OPTIONS,
        )
    options = cluster_options(url)
    if not options["ssl"]:
        options["connection_class"] = PackedConnection
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_nodes(url)],  # type: ignore[no-untyped-call]
        retry=no_retry,
        **options,
        **_CLIENT_OPTIONS,
    )


def connect_state_async(url: str) -> AsyncStateRedis:
    """An asyncio client for `url` (the push runtime's shared breaker, rate limit and
    tokens); its owner closes it (`aclose`)."""
    if not is_cluster_url(url):
        return aioredis.Redis.from_url(url, decode_responses=True)
    return AsyncRedisCluster(
        startup_nodes=[AsyncClusterNode(host, port) for host, port in cluster_nodes(url)],
        **cluster_options(url),
        decode_responses=True,
    )


def queued(pipe: StatePipeline) -> list[Queued]:
    """The commands queued in `pipe` so far. A cluster pipeline keeps them in its
    execution strategy (redis-py 8), not in the `command_stack` it still has."""
    if isinstance(pipe, ClusterPipeline):
        strategy: Any = pipe._execution_strategy
        return [(c.args, c.options) for c in strategy.command_queue]
    return list(pipe.command_stack)


def unqueue_after(pipe: StatePipeline, kept: int) -> None:
    """Drop the commands queued in `pipe` after its first `kept`."""
    if isinstance(pipe, ClusterPipeline):
        strategy: Any = pipe._execution_strategy
        del strategy.command_queue[kept:]
    else:
        del pipe.command_stack[kept:]
