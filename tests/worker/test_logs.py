"""Logging set up in one place: JSON lines or text, never a task's result or arguments."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from worker.service.logs import configure_logging, log_format


@pytest.fixture
def root_restored() -> Iterator[None]:
    """configure_logging replaces the root logger's handlers: give pytest's back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    trace = logging.getLogger("celery.app.trace")
    filters = list(trace.filters)
    yield
    root.handlers, root.level = handlers, level
    trace.filters = filters
    logging.captureWarnings(False)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_format_is_json_for_a_service_off_a_terminal_unless_set() -> None:
    assert log_format(None, service=True, stream=io.StringIO()) == "json"
    assert log_format(None, service=True, stream=_Terminal()) == "text"
    assert log_format(None, service=False, stream=io.StringIO()) == "text"
    assert log_format("text", service=True, stream=io.StringIO()) == "text"
    assert log_format("json", service=False, stream=_Terminal()) == "json"


def test_json_lines_carry_fixed_fields_and_the_event_name(root_restored: None) -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", out)
    logging.getLogger("push.delivery").error(
        "breaker %s opened", "fcm:h:0123", extra={"event": "credentials_rejected", "x": "leak"}
    )
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("worker.firing.firer").exception("rule %s failed", "cart")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["level"] == "ERROR" and first["logger"] == "push.delivery"
    assert first["message"] == "breaker fcm:h:0123 opened"
    assert first["event"] == "credentials_rejected"
    assert set(first) == {"ts", "level", "logger", "message", "pid", "event"}
    assert "ValueError: boom" in second["exc"]


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_celery_success_line_keeps_the_task_and_drops_its_result(
    root_restored: None, fmt: str
) -> None:
    """Celery logs 'Task … succeeded in …s: <return value>' and attaches the arguments
    as `data`; a fire task returns message titles and item ids."""
    from celery.app import trace

    out = io.StringIO()
    configure_logging("INFO", "json" if fmt == "json" else "text", out)
    context = {
        "id": "t-1",
        "name": "pushrec.fire",
        "return_value": "[{'message': {'title': 'Secret title'}}]",
        "runtime": 0.25,
        "args": "()",
        "kwargs": "{'user_id': 'Zoë-42'}",
    }
    logging.getLogger("celery.app.trace").info(trace.LOG_SUCCESS, context, extra={"data": context})
    text = out.getvalue()
    assert "Task pushrec.fire[t-1] succeeded in 0.25s" in text
    assert "Secret title" not in text and "Zo" not in text


def test_the_pool_and_consumer_lines_come_out_in_the_format_without_message_bodies(
    root_restored: None,
) -> None:
    """billiard logs on a logger of its own without a handler (its lines went out raw);
    Celery's consumer prints the body of a message it could not use."""
    from billiard import util as billiard_util
    from celery.worker.consumer import consumer as celery_consumer

    out = io.StringIO()
    configure_logging("INFO", "json", out)
    pool = logging.getLogger("multiprocessing")
    handlers, propagate = list(pool.handlers), pool.propagate
    billiard_util.get_logger()  # billiard turns propagation off on first use
    try:
        billiard_util.error("Process %r pid:%r exited with %r", "ForkPoolWorker-1", 7, "SIGTERM")
        logging.getLogger("celery.worker.consumer.consumer").error(
            vars(celery_consumer)["UNKNOWN_TASK_ERROR"],
            "'pushrec.trak'", "{'token': 'fcm-SECRET'}", {"id": "x"}, {},
        )  # fmt: skip
    finally:
        pool.handlers, pool.propagate = handlers, propagate
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["logger"] == "multiprocessing" and "ForkPoolWorker-1" in first["message"]
    assert second["message"].startswith("Received unregistered task of type")
    assert "SECRET" not in out.getvalue()
