"""The Celery application: JSON only, three queues, settings for idempotent tasks."""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from celery.signals import (
    task_prerun,
    task_rejected,
    task_revoked,
    task_unknown,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)
from kombu import Exchange, Queue

from worker import contract
from worker.service import receipt, task_ledger
from worker.service.runtime import Runtime
from worker.service.tasks import register_tasks
from worker.settings import Settings


class PushrecApp(Celery):
    """A Celery app that carries pushrec's settings and opens one `Runtime` per process."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("pushrec", set_as_current=False)
        self.settings = settings
        self._opened: tuple[int, Runtime] | None = None  # (pid, runtime): one read
        self._runtime_lock = threading.Lock()  # pool threads (--pool threads) share one

    @property
    def _runtime(self) -> Runtime | None:
        """This process's runtime if open (None in a child until it opens its own)."""
        opened = self._opened
        return opened[1] if opened is not None and opened[0] == os.getpid() else None

    def runtime(self) -> Runtime:
        """This process's runtime, opened on first use; a forked child opens its own."""
        if (runtime := self._runtime) is not None:
            return runtime
        with self._runtime_lock:
            if (runtime := self._runtime) is None:
                runtime = Runtime.open(self.settings, enqueue=self.enqueue)
                self._opened = (os.getpid(), runtime)
            return runtime

    def enqueue(self, task_name: str, kwargs: dict[str, Any]) -> None:
        """Send one of pushrec's tasks to its configured queue."""
        self.send_task(task_name, kwargs=kwargs, queue=queue_for(self.settings, task_name))

    def close_runtime(self) -> None:
        if (runtime := self._runtime) is not None:
            runtime.close()
        self._opened = None


def queue_for(settings: Settings, task_name: str) -> str:
    """The configured queue name of a contract task."""
    logical = contract.TASK_QUEUES[task_name]
    return {
        contract.ACTIVITY: settings.queue_activity,
        contract.PUSH: settings.queue_push,
        contract.MAINTENANCE: settings.queue_maintenance,
    }[logical]


def soft_time_limit(hard_s: int) -> int:
    """The soft limit leaves a task a moment to stop cleanly before the hard kill: 10 s,
    or a fifth of a short limit (the in-task Redis retries need the rest)."""
    return hard_s - max(1, min(10, hard_s // 5))


def celery_config(settings: Settings) -> dict[str, Any]:
    transport = {
        "visibility_timeout": settings.visibility_timeout_s,
        "global_keyprefix": settings.broker_key_prefix,
        # kombu sweeps for messages whose worker died every interval x throttle seconds
        # (default 10 x 10): sweep every few seconds so recovery takes about one timeout.
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 4)),
        "unacked_restore_throttle": 1,
    }
    return {
        "broker_url": contract.celery_url(settings.effective_broker_url),
        "result_backend": contract.celery_url(settings.result_backend_url),
        # JSON only: a pickle payload from the network is code execution.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Every task is idempotent (event ids, message ids), so we prefer "at least once":
        # ack after the task ran; a worker killed mid-task gets its message redelivered.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Bad input and bugs are recorded and return; a task that gives up on Redis rejects
        # its message with requeue (tasks.py). A task over its time limit is requeued too.
        "task_acks_on_failure_or_timeout": False,
        # One message in hand per process: a slow task never hides others from idle workers.
        "worker_prefetch_multiplier": 1,
        # Celery's consumer, with the messages it cannot read recorded and kept out of it
        # (a message of the wrong shape ended the worker, and the next: consumer.py).
        "worker_consumer": "worker.service.consumer:Consumer",
        # Redis has no real acks: an unacked message is redelivered after the visibility
        # timeout. Celery reads it from the broker and the result-backend options, so both
        # carry the same value, and the hard time limit stays below it (checked in Settings)
        # so a running task is never handed to a second worker.
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "task_time_limit": settings.task_time_limit_s,
        "task_soft_time_limit": soft_time_limit(settings.task_time_limit_s),
        # The index rebuild has its own, longer limit (and a lease: worker/service/rebuild.py).
        "task_annotations": {
            contract.REBUILD_INDEX: {
                "time_limit": settings.rebuild_time_limit_s,
                "soft_time_limit": soft_time_limit(settings.rebuild_time_limit_s),
            }
        },
        # Left running on a lost broker connection: cancelling them makes kombu 5.7's
        # Redis channel crash the worker on reconnect (celery/celery#9250, seen here in
        # tests/worker/test_worker_integration.py); an ack that fails is redelivered anyway.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_connection_retry_on_startup": True,
        "task_ignore_result": True,
        "result_expires": 86_400,
        "task_default_queue": settings.queue_activity,
        # Each queue has its own exchange and routing key: a shared default binding would
        # copy every message into all three queues.
        "task_queues": [
            Queue(name, Exchange(name, type="direct"), routing_key=name)
            for name in (settings.queue_activity, settings.queue_push, settings.queue_maintenance)
        ],
        "task_routes": {
            name: {"queue": queue_for(settings, name)} for name in contract.TASK_QUEUES
        },
        "enable_utc": True,
        "timezone": "UTC",
        "worker_hijack_root_logger": False,
        # kombu's Redis transport, with a message whose envelope it cannot decode recorded
        # and dropped instead of ending the worker (broker.py); other brokers as they are
        "broker_transport": (
            "worker.service.broker:Transport"
            if urlsplit(settings.effective_broker_url).scheme in ("redis", "rediss")
            else None
        ),
    }


def create_app(settings: Settings) -> PushrecApp:
    """The worker's app with every contract task registered."""
    app = PushrecApp(settings)
    app.conf.update(celery_config(settings))
    register_tasks(app)
    if settings.simulated_clock_file is not None:  # a replay moving the clock by steps
        task_ledger.install(settings)

    @worker_process_init.connect(weak=False)
    def _open(**_: object) -> None:
        app.close_runtime()  # drop anything inherited from the parent before the fork
        app.runtime()

    @worker_process_shutdown.connect(weak=False)
    def _close(**_: object) -> None:
        app.close_runtime()

    @worker_shutdown.connect(weak=False)
    def _close_main(**_: object) -> None:
        app.close_runtime()  # the threads and solo pools run tasks in the main process

    @task_unknown.connect(weak=False)
    def _unknown(sender: Any, message: Any, name: str, id: str, **_: object) -> None:
        if getattr(sender, "app", None) is app:  # the signal is global; apps are not
            receipt.record_unknown_task(app, message, name, id)

    @task_rejected.connect(weak=False)
    def _refused(sender: Any, message: Any, exc: BaseException | None, **_: object) -> None:
        if getattr(sender, "app", None) is app:
            receipt.record_refused(app, message, exc)

    @task_revoked.connect(weak=False)
    def _expired(sender: Any, request: Any, expired: bool = False, **_: object) -> None:
        if expired and getattr(sender, "app", None) is app:  # revoked by hand: as asked
            receipt.record_expired(app, request)

    @task_prerun.connect(weak=False)
    def _between_tasks(**_: object) -> None:
        # A newer index loaded in the background is swapped in here, or by the follower
        # thread while no task runs; a firing reads the index once (index_holder.py).
        runtime = app._runtime
        if runtime is not None and runtime.has_index:
            runtime.index.between_tasks()
            runtime.index.follow()  # and while no task runs

    return app
