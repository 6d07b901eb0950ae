"""Arbitrary JSON thrown at the contract: nothing crashes, nothing valid is lost."""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.clock import RUN_NOW
from worker.service import ingest
from worker.service.runtime import Runtime
from worker.shoppers.inputs import InvalidInput, Limits, parse_event

NOW = RUN_NOW  # applied events reach the trending buckets, which Redis expires

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
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
    before = runtime.redis.xlen(runtime.keys.interaction_log)

    summary = ingest.track_batch(runtime, raws, NOW, run)

    assert summary["applied"] + summary["duplicates"] == len(expected_valid)
    assert summary["rejected"] == len(raws) - len(expected_valid)
    assert runtime.redis.xlen(runtime.keys.interaction_log) - before == summary["applied"]
    logged = {
        f["event_id"]
        for _, f in runtime.redis.xrevrange(runtime.keys.interaction_log, count=len(raws) + 1)
    }  # type: ignore[union-attr]
    for raw in expected_valid:
        if str(raw["event_id"]).startswith(run):
            assert str(raw["event_id"]) in logged


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_parse_event_never_raises_anything_but_invalid_input(value: Any) -> None:
    try:
        parse_event(value, Limits(), NOW)
    except InvalidInput as exc:
        assert exc.code and exc.reason
