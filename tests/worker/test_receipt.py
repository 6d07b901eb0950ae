"""Which protocol-2 headers a worker refuses before Celery reads them (`receipt.py`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from celery import Celery
from kombu.exceptions import ContentDisallowed
from kombu.message import Message

from worker.service import receipt


class _Message:
    """What `refused_headers` reads of a kombu message."""

    def __init__(self, headers: Any, payload: Any = None) -> None:
        self.headers = headers
        self.payload = payload
        self.body = json.dumps(payload).encode()


def _celerys_own_headers() -> dict[str, Any]:
    """The headers Celery's own producer writes for a call (protocol 2)."""
    app = Celery("headers", set_as_current=False)
    message = app.amqp.as_task_v2("1f0e", "pushrec.track", kwargs={"event": {}}, retries=2)
    return dict(message.headers)


def test_celerys_own_headers_and_a_minimal_producers_pass() -> None:
    headers = _celerys_own_headers()
    assert headers["timelimit"] == [None, None] and headers["retries"] == 2
    assert receipt.refused_headers(_Message(headers)) is None
    as_json = json.loads(json.dumps(headers))  # as a broker hands them over
    assert receipt.refused_headers(_Message(as_json)) is None
    assert receipt.refused_headers(_Message({"lang": "go", "task": "t", "id": "1"})) is None


def test_a_message_without_a_task_header_is_left_to_celery() -> None:
    assert receipt.refused_headers(_Message(None)) is None
    assert receipt.refused_headers(_Message({"id": {"a": 1}})) is None  # protocol 1


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"task": ["pushrec.track"]}, "'task' must be a string"),
        ({"id": None}, "'id' must be a string"),
        ({"id": ""}, "'id' must be a string"),
        ({"id": "x" * 256}, "'id' must be a string of 1 to 255"),
        ({"timelimit": "x"}, "'timelimit'"),
        ({"timelimit": [1, 2, 3]}, "'timelimit'"),
        ({"timelimit": [-1, None]}, "'timelimit'"),
        ({"timelimit": [True, None]}, "'timelimit'"),
        ({"eta": 1700000000}, "'eta' must be a string"),
        ({"root_id": ["r"]}, "'root_id' must be a string"),
        ({"retries": "2"}, "'retries' must be a whole number"),
        ({"retries": -1}, "'retries' must be a whole number"),
        ({"retries": True}, "'retries' must be a whole number"),
        ({"ignore_result": "no"}, "'ignore_result' must be true or false"),
    ],
)
def test_headers_celery_cannot_read_are_refused_with_the_header_named(
    change: dict[str, Any], words: str
) -> None:
    call = [[], {"event": {"event_id": "e1"}}, {}]
    refused = receipt.refused_headers(_Message({**_celerys_own_headers(), **change}, call))
    assert refused is not None
    reason, kept = refused
    assert reason.startswith("header ") and words in reason
    assert kept["kwargs"] == {"event": {"event_id": "e1"}}  # kept to replay


def test_a_refused_message_whose_body_is_not_a_call_keeps_only_its_size() -> None:
    refused = receipt.refused_headers(_Message({"task": "t", "id": 5}, {"not": "a call"}))
    assert refused is not None
    assert refused[1]["id"] == "<withheld: int>"
    assert refused[1]["body"].startswith("<withheld: ")


def test_a_refused_message_of_a_content_type_not_accepted_is_refused_all_the_same() -> None:
    """Its body raises `ContentDisallowed` when read (a kombu message, as the worker gets
    it): only a record wanted it, so it is withheld, and the headers still decide."""
    message = Message(
        body=b"event: {event_id: e1}",
        content_type="application/x-yaml",
        content_encoding="utf-8",
        headers={"lang": "rb", "task": "pushrec.track", "id": "y1", "timelimit": "x"},
        accept=["application/json"],
    )
    with pytest.raises(ContentDisallowed):
        message.payload  # noqa: B018
    refused = receipt.refused_headers(message)
    assert refused is not None
    assert "'timelimit'" in refused[0] and refused[1]["body"].startswith("<withheld: ")
