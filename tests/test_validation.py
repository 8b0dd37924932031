"""Request parsing under hostile and random input: a clear error or clean events, nothing else."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import InvalidInput
from gateway.items import Batch, StoredEvent, batch_item
from gateway.validation import check_channel, events_from_body, parse_json_body
from tests.strategies import bodies, json_values

LIMITS = {"max_event_bytes": 1024, "max_batch_events": 5}


@given(bodies)
def test_every_json_text_becomes_storable_events_or_a_4xx(text: str) -> None:
    try:
        events = events_from_body(parse_json_body(text.encode()), **LIMITS)
    except InvalidInput as exc:
        assert 400 <= exc.status_code < 500 and exc.message
        return
    parsed = json.loads(text)
    values = [e["data"] for e in parsed["events"]] if "events" in parsed else [parsed["data"]]
    stored = tuple(StoredEvent("0a1b2c3d", i + 1, e.data) for i, e in enumerate(events))
    batch_item("c", Batch(stored, 0, "w"))
    for event, value in zip(events, values, strict=True):
        # Strict JSON in valid UTF-8, as every client's JSON.parse needs it.
        assert parse_json_body(event.data.encode("utf-8")) == value


@given(st.binary(max_size=512))
def test_parse_json_body_accepts_json_or_says_why(raw: bytes) -> None:
    try:
        parse_json_body(raw)
    except InvalidInput as exc:
        assert exc.code == "invalid_json" and exc.message


@given(json_values)
def test_events_from_body_never_fails_otherwise(body: Any) -> None:
    try:
        events = events_from_body(body, **LIMITS)
    except InvalidInput as exc:
        assert exc.status_code in (400, 413) and exc.message
        return
    assert 1 <= len(events) <= LIMITS["max_batch_events"]
    for event in events:
        json.loads(event.data)
        assert event.event is None or event.event.isascii()


@given(st.text(max_size=200))
def test_check_channel_accepts_only_the_grammar(name: str) -> None:
    try:
        assert check_channel(name) == name
    except InvalidInput:
        return
    assert 1 <= len(name) <= 128
    assert all(c.isascii() and (c.isalnum() or c in "_-.:") for c in name)


@pytest.mark.parametrize(
    "body",
    [
        {"data": 1, "event": "ok", "extra": True},
        {"events": [{"data": 1}] * 6},
        {"events": [{"data": "x" * 2000}]},
        {"events": [{"data": 1}, {"data": 2, "event": "bad name"}]},
        {"event": "reset", "data": {}},
    ],
)
def test_events_from_body_rejects_a_batch_whole(body: Any) -> None:
    with pytest.raises(InvalidInput):
        events_from_body(body, **LIMITS)
