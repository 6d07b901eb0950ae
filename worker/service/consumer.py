"""The worker's consumer: Celery's, with the messages it cannot read kept out of it.

Celery's consumer (the worker's main process) turns each message into a request. Headers
of a shape it does not expect raise there, outside any handler, and end the worker;
its unacked message is then restored at the head of the queue and ends the next one.
Such a message is recorded and acked here before Celery reads it (`receipt.py`); one
that still raises a data error in Celery's reading is recorded and acked the same way,
so that no message can stop every worker of a queue.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, cast

from celery.worker.consumer import Consumer as CeleryConsumer
from vine import promise

from worker.service import broker, receipt
from worker.service.app import PushrecApp

log = logging.getLogger(__name__)


class Consumer(CeleryConsumer):
    """`worker_consumer` of the pushrec app (`celery_config`)."""

    def connect(self) -> Any:
        connection = super().connect()
        if isinstance(transport := connection.transport, broker.Transport):
            app = cast(PushrecApp, self.app)
            transport.on_unreadable = partial(receipt.record_unreadable, app)
        return connection

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        receipt.record_undecodable(cast(PushrecApp, self.app), message, exc)
        super().on_decode_error(message, exc)  # logs it and acks

    def create_task_handler(self, promise: Any = promise) -> Any:
        handler = super().create_task_handler(promise)
        app = cast(PushrecApp, self.app)  # `worker_consumer` of that app only

        def on_task_received(message: Any) -> Any:
            try:
                if (refused := receipt.refused_headers(message)) is not None:
                    reason, kept = refused
                    task = receipt.task_of(message, app.tasks)
                    receipt.record(app, task, "bad_call", reason, kept)
                    message.ack()
                    return None
                return handler(message)
            except receipt.SHAPE_ERRORS as exc:
                log.exception("a message Celery could not read: recorded and dropped")
                receipt.record_refused(app, message, exc)
                if not message.acknowledged:
                    message.ack()
                return None

        return on_task_received
