"""Arbitrary JSON thrown at the contract: nothing crashes, nothing valid is lost."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from push.ssrf import DestinationGuard
from tests.clock import RUN_NOW
from tests.worker.sharded import log_entries, log_length
from worker.service import ingest
from worker.service.runtime import Runtime
from worker.shoppers.contact_inputs import parse_device, parse_device_removal, parse_preferences
from worker.shoppers.inputs import InvalidInput, Limits, parse_event, parse_item, parse_user_id

NOW = RUN_NOW  # applied events reach the trending buckets, which Redis expires

# Text from every Unicode category, lone surrogates (valid in JSON, not in UTF-8) included;
# short and long (past every field's limit).
any_text = st.text(st.characters(exclude_categories=()), max_size=20) | st.text(
    st.characters(exclude_categories=()), min_size=100, max_size=5000
)
# Integers past a float's range (309+ digits) and past an int64, besides small ones.
any_integer = st.integers() | st.integers(min_value=10**300, max_value=10**1200).flatmap(
    lambda n: st.sampled_from([n, -n])
)
json_values = st.recursive(
    st.none() | st.booleans() | any_integer | st.floats() | any_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=12,
)

valid_events = st.fixed_dictionaries(
    {
        "user_id": st.sampled_from(["u1", "u2", 7]),
        "type": st.sampled_from(["view", "add_to_cart", "remove_from_cart", "purchase"]),
        "item_id": st.sampled_from(["a", "b", "c"]),
        "ts": st.floats(min_value=NOW - 86_400 * 30, max_value=NOW)
        | st.just("2026-11-27T10:00:00+02:00"),
    },
    optional={
        "quantity": st.integers(min_value=1, max_value=5),
        "price": st.floats(min_value=0, max_value=1000),
        "props": st.dictionaries(
            st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3
        ),
    },
)

# Events that look almost right: one field swapped for arbitrary JSON.
mangled_events = st.builds(
    lambda event, field, value: {**event, field: value},
    valid_events,
    st.sampled_from(
        ["user_id", "type", "item_id", "ts", "quantity", "price", "props", "event_id", "v"]
    ),
    json_values,
)

entries = st.lists(
    valid_events.map(lambda e: ("valid", e))
    | mangled_events.map(lambda e: ("mangled", e))
    | json_values.map(lambda v: ("junk", v)),
    max_size=12,
)


def _validity(raw: Any) -> bool:
    try:
        parse_event(raw, Limits(), NOW)
    except InvalidInput:
        return False
    return True


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(entries)
def test_any_batch_applies_exactly_its_valid_events(
    runtime: Runtime, batch: list[tuple[str, Any]]
) -> None:
    run = uuid.uuid4().hex[:8]
    raws: list[Any] = []
    for n, (_, raw) in enumerate(batch):
        if isinstance(raw, dict) and "event_id" not in raw:
            raw = {**raw, "event_id": f"{run}-{n}"}
        raws.append(raw)
    expected_valid = [r for r in raws if _validity(r)]
    before = log_length(runtime)

    summary = ingest.track_batch(runtime, raws, NOW, run)

    assert summary["applied"] + summary["duplicates"] == len(expected_valid)
    assert summary["rejected"] == len(raws) - len(expected_valid)
    assert log_length(runtime) - before == summary["applied"]
    logged_ids = {f["event_id"] for f in log_entries(runtime)}
    for raw in expected_valid:
        if str(raw["event_id"]).startswith(run):
            assert str(raw["event_id"]) in logged_ids


def _reaches(fields: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A valid-looking object for a parser with one field replaced by arbitrary JSON."""
    return st.sampled_from(sorted(fields)).flatmap(
        lambda name: json_values.map(lambda value: {**fields, name: value})
    )


_EVENT = {"event_id": "e1", "user_id": "u1", "type": "view", "item_id": "a", "ts": NOW}
_ITEM = {
    "item_id": "a",
    "title": "Mug",
    "price": 3.5,
    "stock": 2,
    "url": "https://x.test/a",
    "ts": NOW,
}
_DEVICE = {"user_id": "u1", "channel": "fcm", "token": "tok-1", "ts": NOW}
_REMOVAL = {"user_id": "u1", "channel": "fcm", "token": "tok-1"}
_PREFERENCES = {
    "user_id": "u1",
    "consent": {"marketing": {"*": True}},
    "timezone": "Europe/Paris",
    "locale": "fr",
    "quiet_hours": {"start": "22:00", "end": "08:00"},
    "ts": NOW,
}
PARSERS: dict[str, tuple[Callable[[Any], object], dict[str, Any]]] = {
    "event": (lambda raw: parse_event(raw, Limits(), NOW), _EVENT),
    "item": (lambda raw: parse_item(raw, Limits(), NOW), _ITEM),
    "device": (lambda raw: parse_device(raw, guard=DestinationGuard()), _DEVICE),
    "removal": (parse_device_removal, _REMOVAL),
    "preferences": (parse_preferences, _PREFERENCES),
    "user_id": (lambda raw: parse_user_id(raw.get("user_id") if isinstance(raw, dict) else raw),
                {"user_id": "u1"}),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PARSERS))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_every_parser_is_total(name: str, data: st.DataObject) -> None:
    """Whatever JSON comes, a parser returns a value or raises InvalidInput with a code
    and a reason that Redis can store (UTF-8): never another error."""
    parse, fields = PARSERS[name]
    value = data.draw(json_values | _reaches(fields))
    try:
        parse(value)
    except InvalidInput as exc:
        assert exc.code and exc.reason
        exc.reason.encode("utf-8")
        assert exc.code != "unparseable", exc.reason  # a parser bug caught by the backstop


@pytest.mark.parametrize(
    ("name", "field", "value", "code"),
    [
        ("event", "ts", 10**309, "bad_timestamp"),
        ("event", "ts", -(10**400), "bad_timestamp"),
        ("item", "ts", 10**309, "bad_timestamp"),
        ("device", "ts", 10**309, "bad_timestamp"),
        ("preferences", "ts", 10**309, "bad_timestamp"),
        ("preferences", "timezone", "A" * 300, "invalid_field"),
        ("event", "event_id", "abc\u202edef", "invalid_field"),
        ("event", "user_id", "u\u2066x", "invalid_field"),
        ("event", "item_id", "a\u200bb", "invalid_field"),
        ("device", "user_id", "u\u2028x", "invalid_field"),
    ],
)
def test_inputs_that_used_to_escape_the_checks_are_rejected(
    name: str, field: str, value: Any, code: str
) -> None:
    parse, fields = PARSERS[name]
    with pytest.raises(InvalidInput) as rejected:
        parse({**fields, field: value})
    assert rejected.value.code == code


def test_a_huge_timestamp_in_a_batch_rejects_that_event_alone(runtime: Runtime) -> None:
    """One event whose ts overflows a float used to fail the whole call of 500."""
    run = uuid.uuid4().hex[:8]
    batch = [{**_EVENT, "event_id": f"{run}-{n}", "item_id": f"i{n}"} for n in range(500)]
    batch[250] = {**batch[250], "ts": 10**309}
    summary = ingest.track_batch(runtime, batch, NOW, run)
    assert (summary["applied"], summary["rejected"]) == (499, 1)
    [row] = runtime.rejected.recent(1)
    assert row["code"] == "bad_timestamp"
    assert json.loads(row["payload"])["event_id"] == f"{run}-250"
