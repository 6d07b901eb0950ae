"""The expensive things one worker process opens once: Redis client, scripts, stores.

A `Runtime` is opened in each worker process after the fork (see `app.py`) and closed
at process shutdown; tasks receive it, never build their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from worker.catalog import Catalog
from worker.contacts import Contacts
from worker.events import Limits
from worker.keys import Keys
from worker.metrics import Metrics
from worker.rejections import RejectedLog
from worker.scripts import Scripts
from worker.settings import Settings
from worker.state import StateStore


def connect_redis(url: str) -> redis.Redis:
    """A pooled client that rides out short outages (a Redis restart) with a few retries.

    Retried commands are safe here: every write pushrec makes is idempotent by id.
    """
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=5),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    keys: Keys
    metrics: Metrics
    rejected: RejectedLog
    state: StateStore
    catalog: Catalog
    contacts: Contacts
    limits: Limits

    @classmethod
    def open(cls, settings: Settings) -> Runtime:
        if settings.redis_url is None:
            raise ValueError("Runtime.open needs settings with a redis_url")
        client = connect_redis(settings.redis_url)
        keys = Keys(settings.key_prefix)
        scripts = Scripts.register(client)
        metrics = Metrics(client, keys)
        return cls(
            settings=settings,
            redis=client,
            keys=keys,
            metrics=metrics,
            rejected=RejectedLog(client, keys, metrics, settings.rejected_log_maxlen),
            state=StateStore(client, keys, settings, scripts, metrics),
            catalog=Catalog(client, keys, scripts, metrics, settings.item_changes_max),
            contacts=Contacts(client, keys, scripts, settings.user_ttl_s),
            limits=Limits.from_settings(settings),
        )

    def close(self) -> None:
        self.redis.close()
