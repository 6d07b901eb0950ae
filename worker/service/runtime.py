"""The expensive things one worker process opens once: Redis client, scripts, stores.

A `Runtime` is opened in each worker process after the fork (see `app.py`) and closed
at process shutdown; tasks receive it, never build their own. Under `--pool threads` the
pool's threads share it: what is built on first use is built once under a lock, and each
thread sends through its own event loop (a loop runs in one thread at a time).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from push.gateway import Router
from push.ssrf import DestinationGuard
from worker.campaigning.runs import Runs
from worker.contract import DELIVER, Enqueue, enqueue_batched
from worker.coupons import Coupons
from worker.coupons.reminders import Reminders
from worker.delivery.gateway_config import gateway_config
from worker.delivery.outbox import Outbox
from worker.delivery.push_runtime import PushRuntime
from worker.delivery.requests import DeliveryRequest, FiringWrites, FreshMessage
from worker.delivery.sender import MessageSender, ReadAhead
from worker.firing.firer import Firer
from worker.firing.index_holder import IndexHolder, StoredHistory
from worker.firing.index_store import open_index_store
from worker.firing.triggers import Triggers
from worker.policy.contact import ContactPolicy
from worker.segmenting.query import SegmentQuery
from worker.settings import Settings
from worker.shoppers.audit import Audit
from worker.shoppers.catalog import Catalog
from worker.shoppers.contacts import Contacts
from worker.shoppers.inputs import Limits
from worker.shoppers.segment_index import SegmentIndex
from worker.shoppers.state import PendingMarks, StateStore
from worker.store.client import StatePipeline, StateRedis, connect_state
from worker.store.dead_letters import DeadLetters
from worker.store.delayed import DelayedJobs
from worker.store.errors import TRANSIENT, describe
from worker.store.keys import Keys
from worker.store.metrics import Metrics
from worker.store.rejections import RejectedLog
from worker.store.scripts import Scripts

log = logging.getLogger(__name__)


def _no_enqueue(task: str, kwargs: dict[str, Any]) -> None:
    raise RuntimeError(f"this runtime cannot send tasks ({task})")


@dataclass
class Runtime:
    settings: Settings
    redis: StateRedis
    keys: Keys
    scripts: Scripts
    metrics: Metrics
    rejected: RejectedLog
    dead_letters: DeadLetters
    state: StateStore
    catalog: Catalog
    contacts: Contacts
    limits: Limits
    policy: ContactPolicy
    outbox: Outbox
    audit: Audit
    delayed: DelayedJobs
    triggers: Triggers
    segment_index: SegmentIndex
    coupons: Coupons
    enqueue: Enqueue = _no_enqueue
    router: Router | None = None  # prebuilt gateways (tests); None: opened from settings
    # registration checks webhook URLs and Web Push endpoints as the push worker does
    destinations: DestinationGuard = field(default_factory=DestinationGuard)
    _index: IndexHolder | None = field(default=None, repr=False)
    _firer: Firer | None = field(default=None, repr=False)
    _pushes: list[PushRuntime] = field(default_factory=list, repr=False)
    _thread: threading.local = field(default_factory=threading.local, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(
        cls, settings: Settings, enqueue: Enqueue = _no_enqueue, router: Router | None = None
    ) -> Runtime:
        """Connect to Redis and build the stores; gateways and index open on first use.
        `router` replaces the gateways the settings name (httpx's `transport=` habit:
        unit tests send through `push.fake.RecordingGateway`)."""
        if settings.redis_url is None:
            raise ValueError("Runtime.open needs settings with a redis_url")
        client = connect_state(settings.redis_url)
        keys = Keys(settings.key_prefix, settings.shards)
        scripts = Scripts.register(client)
        # Redis may be away while a worker starts (or loading, or read-only): the first
        # task then meets NoScriptError and loads them (service/tasks.py, `_run`).
        with contextlib.suppress(*TRANSIENT):
            scripts.load(client)
        metrics = Metrics(client, keys)
        delayed = DelayedJobs(client, keys, scripts)
        return cls(
            settings=settings,
            redis=client,
            keys=keys,
            scripts=scripts,
            metrics=metrics,
            rejected=RejectedLog(client, keys, metrics, settings.rejected_log_maxlen),
            dead_letters=DeadLetters(client, keys, metrics, settings.dead_letters_maxlen),
            state=StateStore(client, keys, settings, scripts, metrics),
            catalog=Catalog(client, keys, scripts, metrics, settings.item_changes_max),
            contacts=Contacts(client, keys, scripts, settings.user_ttl_s),
            limits=Limits.from_settings(settings),
            policy=ContactPolicy(keys, scripts, settings),
            outbox=Outbox(client, keys, scripts),
            audit=Audit(
                client,
                keys,
                settings.decisions_kept,
                settings.attribution_window_s,
                settings.user_ttl_s,
            ),
            delayed=delayed,
            triggers=Triggers(client, keys, settings.rules, settings.trigger_max_age_s),
            segment_index=SegmentIndex(client, keys),
            coupons=Coupons(
                client,
                keys,
                scripts,
                metrics,
                settings.coupon_pools,
                settings.currency,
                settings.user_ttl_s,
                Reminders(settings.rules, delayed),
            ),
            enqueue=enqueue,
            router=router,
            destinations=DestinationGuard(settings.destination_allowed_hosts),
        )

    @property
    def has_index(self) -> bool:
        return self._index is not None

    @property
    def index(self) -> IndexHolder:
        """The process's index holder (loads the published artifact on first use)."""
        if self._index is not None:
            return self._index
        with self._lock:
            if self._index is None:
                index = IndexHolder(
                    open_index_store(self.settings),
                    self.redis,
                    self.keys,
                    stored=StoredHistory.of(self.settings),
                    metrics=self.metrics,
                )
                index.load_now()
                self._index = index  # published once loaded: other threads never see it half-built
            return self._index

    def firer(self) -> Firer:
        """Rule firing (compiled templates, the index), built on first use."""
        if self._firer is not None:
            return self._firer
        index = self.index
        with self._lock:
            if self._firer is None:
                self._firer = Firer(
                    self.redis, self.keys, self.settings, self.state, self.catalog, self.policy,
                    self.outbox, self.audit, self.delayed, index, self, self.metrics,
                    self.coupons,
                )  # fmt: skip
            return self._firer

    def segment_query(self) -> SegmentQuery:
        return SegmentQuery(self.redis, self.keys, {s.name: s for s in self.settings.segments})

    def runs(self) -> Runs:
        """Campaign runs (cheap to build: no index, no gateway)."""
        return Runs(self.redis, self.keys, self.scripts, self.segment_query())

    def queue_recheck(
        self, fresh: Mapping[str, FreshMessage], owner: str, pipe: StatePipeline
    ) -> Callable[[Iterator[Any]], ReadAhead] | None:
        """Where the task `owner` will deliver messages it is storing itself
        (`deliver_queued`), queue their send-time re-check in `pipe`, the round trip of
        the firing's create (`MessageSender.queue_recheck`), and return what reads it."""
        if not (self.settings.deliver_inline and owner and fresh):
            return None
        try:
            sender = self.sender()
        except Exception:  # `deliver_queued` meets it again, and queues the messages
            return None
        return sender.queue_recheck(fresh, pipe)

    def deliver_queued(
        self,
        message_ids: list[str],
        owner: str,
        fresh: Mapping[str, FreshMessage],
        read_ahead: ReadAhead | None = None,
        marks: PendingMarks | None = None,
        writes: FiringWrites | None = None,
    ) -> None:
        """Deliver messages just queued by the task `owner`: in that task when
        `settings.deliver_inline` (a node that consumes the push queue gains no isolation
        from a second task, only its cost), else by deliver tasks on the push queue. An
        inline delivery that fails hands its messages to the push queue; a device it had
        already claimed stays with it until the claim's lease (120 s) runs out, so the
        deliver task skips that device and the scheduler's sweep sends the message after
        (the fallback itself never sends twice; a failure after a gateway took a message
        is the duplicate case every delivery has). Nothing is lost, even with the queue
        away: the message stays queued for the sweep. `fresh`:
        the messages the firing stored, which an inline delivery need not read back;
        `read_ahead`: their re-check, read with the firing's create (`queue_recheck`);
        `marks`: pending marks an inline delivery clears with its settling; `writes`:
        the firing's writes, which land before anything is sent or queued (with an
        inline delivery's caps and claims, else alone), and whose failure raises."""
        if self.settings.deliver_inline and owner:
            requests = [DeliveryRequest(mid) for mid in message_ids]
            for attempt in range(2):
                try:
                    self.sender().deliver_many(
                        requests, self.settings.now(), f"{owner}:inline", fresh, read_ahead,
                        marks, writes,
                    )  # fmt: skip
                    return
                except Exception as exc:
                    if writes is not None and writes.failed is not None:
                        raise  # the firing's writes: the task's to retry
                    if isinstance(exc, redis.exceptions.NoScriptError) and attempt == 0:
                        # a promoted replica or a restarted Redis without our scripts: load
                        # them and deliver again (the same owner takes back its own claims),
                        # rather than leave claimed devices to the sweep
                        self.scripts.load(self.redis)
                        read_ahead = None  # read again, with the scripts back
                        continue
                    self._inline_failed(message_ids, exc)
                    break
        if writes is not None:
            writes.land()
        enqueue_batched(self.enqueue, DELIVER, "message_ids", message_ids)

    @staticmethod
    def _inline_failed(message_ids: list[str], exc: Exception) -> None:
        log.warning("inline delivery of %d messages failed, queued instead: %s",
                    len(message_ids), describe(exc))  # fmt: skip

    def sender(self) -> MessageSender:
        """Delivery (event loop, HTTP clients, gateways), opened on first use in each
        thread: push workers only."""
        sender: MessageSender | None = getattr(self._thread, "sender", None)
        if sender is None:
            push = PushRuntime(self.settings, gateway_config(self.settings), self.router)
            with self._lock:
                self._pushes.append(push)
            sender = self._thread.sender = MessageSender(
                self.redis, self.keys, self.settings, self.contacts, self.policy, self.outbox,
                self.audit, self.delayed, push, self.metrics, self.segment_index, self.scripts,
            )  # fmt: skip
        return sender

    def close(self) -> None:
        """At process shutdown, when no task runs any more."""
        with self._lock:
            pushes, self._pushes = self._pushes, []
        for push in pushes:
            push.close()
        if self._index is not None:
            self._index.close()
        self.redis.close()
