"""The leader scheduler's housekeeping (every `housekeeping_interval_s`): what bounds the
keys and files that writes alone do not.

- Index versions: the store keeps the `index_versions_kept` newest, the published one
  (the store's `current`), the one the Redis pointer names (workers follow it, and it may
  differ from `current` after a CLI publish that could not reach Redis), and every
  version a worker process reported serving within `index_serving_grace_s` (the index
  holder notes it at each version check; factors and flat indexes are memory-mapped, and
  on a shared volume another host's delete would pull pages from under them). On an
  object store each host's cache is pruned by the host itself (`index_cache_keep`).
- Streams: each write trims its stream to MAXLEN ~ (whole nodes), which never trims a
  stream no longer written or one whose setting was lowered, and bounds count, not age.
  Housekeeping trims each to its count and, exactly, to its age: stream ids are the Redis
  server's clock in ms when the entry was added, so the age is wall-clock age (never
  the simulated clock of a replay).
- Retired ledgers: the stats of a rule or campaign, and a campaign's run and history
  keys, have no TTL while it is configured (they are its figures). Once it is no longer
  configured they expire `retired_kept_days` later; configured again, the expiry goes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass

from indexing import ArtifactStore
from worker.settings import Settings
from worker.store.client import StateRedis
from worker.store.keys import Keys
from worker.store.metrics import Metrics

log = logging.getLogger(__name__)

_DAY_S = 86_400
_SCAN_COUNT = 1000


@dataclass(frozen=True)
class StreamBound:
    key: str
    maxlen: int
    max_age_s: float | None


def stream_bounds(keys: Keys, settings: Settings) -> list[StreamBound]:
    """Every stream pushrec writes, with its count and age bounds."""

    def age(days: int | None) -> float | None:
        return None if days is None else days * _DAY_S

    s = settings
    per_shard = max(1, s.interaction_log_maxlen // keys.shards)  # as `StateStore` writes it
    interactions = age(s.interaction_log_max_age_days)
    return [
        *(StreamBound(keys.interaction_log(n), per_shard, interactions) for n in keys.all_shards),
        StreamBound(keys.rejected_log, s.rejected_log_maxlen, age(s.rejected_log_max_age_days)),
        StreamBound(keys.dead_letters, s.dead_letters_maxlen, age(s.dead_letters_max_age_days)),
    ]  # fmt: skip


def trim_streams(client: StateRedis, bounds: Collection[StreamBound], now: float) -> int:
    """Trim each stream exactly to its count, then to entries added after `now` (wall
    clock, epoch s) minus its age; returns the entries removed."""
    pipe = client.pipeline(transaction=False)
    for bound in bounds:
        pipe.xtrim(bound.key, maxlen=bound.maxlen, approximate=False)
        if bound.max_age_s is not None:
            oldest_ms = max(0, int((now - bound.max_age_s) * 1000))
            pipe.xtrim(bound.key, minid=f"{oldest_ms}-0", approximate=False)
    return sum(int(removed) for removed in pipe.execute())


def prune_index(
    store: ArtifactStore, client: StateRedis, keys: Keys, keep: int, grace_s: float, now: float
) -> list[str]:
    """Prune `store` to its `keep` newest versions, sparing the Redis pointer's version and
    those served within `grace_s` of `now` (wall clock); forget older serving notes.
    Returns the versions deleted."""
    pipe = client.pipeline(transaction=False)
    pipe.get(keys.index_version)
    pipe.zrangebyscore(keys.index_serving, now - grace_s, "+inf")
    pipe.zremrangebyscore(keys.index_serving, "-inf", f"({now - grace_s!r}")
    pointer, serving, _ = pipe.execute()
    spare = {str(v) for v in serving} | ({str(pointer)} if pointer else set())
    return store.prune(keep, spare)


def expire_retired(
    client: StateRedis,
    keys: Keys,
    rules: Collection[str],
    campaigns: Collection[str],
    kept_s: int,
) -> tuple[int, int]:
    """Give the stats of rules (and campaigns) not in `rules`, and the keys of campaigns
    not in `campaigns`, an expiry of `kept_s` unless they have one; take it off those
    configured (again). Returns (keys given an expiry, keys made permanent again)."""
    stats_base = keys.rule_stats("")
    campaign_base = keys.campaign("").base
    owners: list[tuple[str, bool]] = []  # key, configured
    for key in client.scan_iter(match=stats_base + "*", count=_SCAN_COUNT):
        owners.append((key, key[len(stats_base) :] in rules))
    for key in client.scan_iter(match=campaign_base + "*", count=_SCAN_COUNT):
        name = key[len(campaign_base) :].rpartition(":")[0]  # <name>:<run|history|...>
        owners.append((key, name in campaigns))
    if not owners:
        return 0, 0
    pipe = client.pipeline(transaction=False)
    for key, _ in owners:
        pipe.ttl(key)
    ttls = pipe.execute()
    # TTL, then EXPIRE where none: EXPIRE NX needs Redis 7, the embedded server may be 6.2
    with_ttl = list(zip(owners, ttls, strict=True))
    retire = [key for (key, configured), ttl in with_ttl if not configured and ttl == -1]
    restore = [key for (key, configured), ttl in with_ttl if configured and ttl >= 0]
    for key in retire:
        pipe.expire(key, kept_s)
    for key in restore:
        pipe.persist(key)
    pipe.execute()
    return len(retire), len(restore)


@dataclass(frozen=True)
class HousekeepingRun:
    at: float
    by: str
    index_versions_pruned: list[str]
    stream_entries_trimmed: int
    ledgers_expiring: int
    ledgers_restored: int
    seconds: float


def run_housekeeping(
    client: StateRedis,
    keys: Keys,
    settings: Settings,
    store: ArtifactStore,
    metrics: Metrics,
    by: str,
    now: float | None = None,
) -> HousekeepingRun:
    """One pass of every duty; counted in metrics and kept as `housekeeping:last`. `now`
    is the wall clock (stream ids and serving notes are wall-clock times)."""
    started = time.perf_counter()
    now = time.time() if now is None else now
    pruned = prune_index(
        store, client, keys, settings.index_versions_kept, settings.index_serving_grace_s, now
    )
    trimmed = trim_streams(client, stream_bounds(keys, settings), now)
    expiring, restored = expire_retired(
        client,
        keys,
        {rule.name for rule in settings.all_rules},
        {campaign.name for campaign in settings.campaigns},
        settings.retired_kept_days * _DAY_S,
    )
    run = HousekeepingRun(
        now, by, pruned, trimmed, expiring, restored, time.perf_counter() - started
    )
    pipe = client.pipeline(transaction=False)
    metrics.add(
        {
            "housekeeping.runs": 1,
            "housekeeping.index_versions_pruned": len(pruned),
            "housekeeping.stream_entries_trimmed": trimmed,
            "housekeeping.ledgers_expiring": expiring,
        },
        pipe=pipe,
    )
    pipe.set(keys.housekeeping_last, json.dumps(asdict(run)))
    pipe.execute()
    log.info("housekeeping: %s", json.dumps(asdict(run)))
    return run
