"""Logging for every pushrec process, set up in one place.

Text for people at a terminal, JSON lines for log collectors: `PUSHREC_LOG_FORMAT`, and
when unset, JSON for the services (`pushrec worker`, `scheduler`, `run`) whose stderr is
not a terminal. A JSON line holds `ts`, `level`, `logger`, `message`, `pid`, and when
present `event` (a stable name alerts key on, e.g. ``credentials_rejected``), `task`,
`task_id` and `exc` (the traceback).

What may be logged: shoppers, devices and endpoints by fingerprint only
(`push.fingerprint`). The formatter writes those fields and nothing else of a record:
Celery attaches task arguments and results to its records as `data`, which must not
leave the process. Celery's "Task … succeeded" line keeps its name, id and run time but
loses the return value (a fire task returns message titles and item ids).
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from push.redact import install_log_redaction
from worker.store.redaction import without_quoted

LogFormat = Literal["json", "text"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_SUCCESS_WITHOUT_RESULT = "Task %(name)s[%(id)s] succeeded in %(runtime)ss"


def log_format(
    setting: LogFormat | None, *, service: bool, stream: TextIO | None = None
) -> LogFormat:
    """The format to use: the setting if given, else JSON for a service whose log stream
    (stderr) is not a terminal, text otherwise."""
    if setting is not None:
        return setting
    target = stream if stream is not None else sys.stderr
    return "json" if service and not target.isatty() else "text"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, of the fields in the module docstring only."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        event = getattr(record, "event", None)
        if isinstance(event, str):
            line["event"] = event
        from celery import current_task  # imported here: the CLI starts without Celery

        task = current_task
        request = getattr(task, "request", None) if task else None
        if request is not None and getattr(request, "id", None):
            line["task"] = task.name
            line["task_id"] = request.id
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


class _SuccessWithoutResult(logging.Filter):
    """Celery's trace logger prints a task's return value on success; keep the line,
    drop the value (and the arguments Celery attaches as `data`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict) and "return_value" in record.args:
            record.msg = _SUCCESS_WITHOUT_RESULT
            record.args = {k: record.args[k] for k in ("name", "id", "runtime")}
        if hasattr(record, "data"):
            record.data = None
        return True


class _WithoutMessageBody(logging.Filter):
    """Celery's consumer prints the body and headers of a message it can't use (a Python
    producer's headers repeat the arguments): device tokens, user ids. pushrec records
    those messages itself, redacted (`service/receipt.py`), so the line keeps what went
    wrong and nothing of the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        short = _body_templates().get(record.msg) if isinstance(record.msg, str) else None
        if short is not None:
            args = record.args if isinstance(record.args, tuple) else ()
            kept = tuple(without_quoted(str(a)) for a in args[: short[1]])
            record.msg, record.args = short[0], kept
            record.exc_info, record.exc_text = None, None  # its message repeats the value
        return True


@functools.cache
def _body_templates() -> dict[str, tuple[str, int]]:
    """Celery's consumer templates that print a message: what to print instead, and how
    many of the leading arguments it keeps."""
    from celery.worker.consumer import consumer

    short = {
        "UNKNOWN_TASK_ERROR": ("Received unregistered task of type %s: recorded", 1),
        "INVALID_TASK_ERROR": ("Received invalid task message: %s: recorded", 1),
        "MESSAGE_DECODE_ERROR": (
            "Can't decode message body: %r [type:%r encoding:%r]: recorded",
            3,
        ),
        "UNKNOWN_FORMAT": ("Received and deleted a message with no task name", 0),
    }
    templates = vars(consumer)
    return {templates[name]: replacement for name, replacement in short.items()}


def configure_logging(level: str | int, fmt: LogFormat, stream: TextIO | None = None) -> None:
    """Send every logger's records to `stream` (stderr) in `fmt`, at `level` and above.
    Idempotent: replaces the root logger's handlers."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers = [handler]
    # billiard (Celery's pool) logs on "multiprocessing" with propagation off and no
    # handler, so its lines ("Process 'ForkPoolWorker-1' … exited with …") went to
    # Python's last-resort handler as raw text: give it ours.
    pool = logging.getLogger("multiprocessing")
    pool.handlers, pool.propagate = [handler], False
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # Two INFO lines per second from the scheduler's poll job say nothing an operator needs.
    logging.getLogger("apscheduler.executors").setLevel(max(logging.WARNING, root.level))
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _SuccessWithoutResult) for f in logger.filters):
            logger.addFilter(_SuccessWithoutResult())
    consumer = logging.getLogger("celery.worker.consumer.consumer")
    if not any(isinstance(f, _WithoutMessageBody) for f in consumer.filters):
        consumer.addFilter(_WithoutMessageBody())
    logging.captureWarnings(True)  # Python warnings become records in `fmt`, not raw lines
    install_log_redaction()


def keep_for_celery(level: str | int, fmt: LogFormat) -> None:
    """Configure logging now and make a Celery worker (and its pool children) keep it:
    with a `setup_logging` receiver, Celery installs no handlers of its own."""
    from celery.signals import setup_logging

    configure_logging(level, fmt)

    @setup_logging.connect(weak=False)
    def _ours(**_: object) -> None:
        configure_logging(level, fmt)
