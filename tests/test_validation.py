"""Request parsing under hostile and random input: a clear error or clean events, nothing else.

Every rejection table has its acceptance table: a check that refused everything
would pass the one and fail the other."""

from __future__ import annotations

import json
import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import InvalidInput, PayloadTooLarge
from gateway.items import Batch, NewEvent, StoredEvent, batch_item
from gateway.validation import (
    check_channel,
    check_channels,
    check_idempotency_key,
    events_from_body,
    new_events,
    parse_json_body,
)
from tests.strategies import bodies, json_values

LIMITS = {"max_event_bytes": 1024, "max_batch_events": 5}
NAME_CHARACTERS = set(string.ascii_letters + string.digits + "_-.:")
# JSON values as Python holds them, without the infinities JSON cannot carry.
finite_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b'{"data": 1}', {"data": 1}),
        (b"[1, 2.5, -0.0, 1e308]", [1, 2.5, -0.0, 1e308]),
        (b'"\\ud83d\\ude00"', "\U0001f600"),  # an escaped surrogate pair is one character
        ('"é€"'.encode(), "é€"),
        (b"null", None),
        (b" true ", True),
        (b"[" * 100 + b"]" * 100, json.loads("[" * 100 + "]" * 100)),
    ],
)
def test_parse_json_body_accepts_json(raw: bytes, value: Any) -> None:
    assert parse_json_body(raw) == value


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff{}", "request body is not valid UTF-8"),
        (b"NaN", "request body is not valid JSON: NaN is not valid JSON"),
        (b"[-Infinity]", "request body is not valid JSON: -Infinity is not valid JSON"),
        (b"1e400", "request body is not valid JSON: the number 1e400 is too large for a double"),
        # a long number is named by its first 40 characters
        (b"1" * 45 + b".5e400", f"request body is not valid JSON: the number {'1' * 40} is too"),
        (b"[" * 100_000 + b"]" * 100_000, "request body is nested too deeply"),
        (b"{", "request body is not valid JSON: Expecting property name enclosed in double"),
        (b"", "request body is not valid JSON: Expecting value"),
    ],
)
def test_parse_json_body_rejects_what_is_not_strict_json(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_json_body(raw)
    assert caught.value.code == "invalid_json"
    assert caught.value.message.startswith(message)


@given(finite_json, st.booleans())
def test_parse_json_body_reads_every_json_value_back(value: Any, ascii_only: bool) -> None:
    assert parse_json_body(json.dumps(value, ensure_ascii=ascii_only).encode()) == value


@given(st.binary(max_size=512))
def test_parse_json_body_accepts_json_or_says_why(raw: bytes) -> None:
    try:
        parse_json_body(raw)
    except InvalidInput as exc:
        assert exc.code == "invalid_json" and exc.message


@pytest.mark.parametrize(
    ("body", "events"),
    [
        ({"data": 1}, [NewEvent("1")]),
        ({"data": None, "event": "tick"}, [NewEvent("null", "tick")]),
        ({"data": {"k": ["é", 2.5]}}, [NewEvent('{"k":["é",2.5]}')]),
        (
            {"events": [{"data": "a"}, {"data": [], "event": "e.1:x-y_z"}]},
            [NewEvent('"a"'), NewEvent("[]", "e.1:x-y_z")],
        ),
        ({"events": [{"data": i} for i in range(5)]}, [NewEvent(str(i)) for i in range(5)]),
        ({"data": "x" * 1022}, [NewEvent(json.dumps("x" * 1022))]),  # 1024 bytes: the limit
        ({"data": 1, "event": "e" * 64}, [NewEvent("1", "e" * 64)]),
        ({"data": 1, "event": "resets"}, [NewEvent("1", "resets")]),  # only "reset" is ours
    ],
)
def test_events_from_body_accepts_an_event_or_a_batch(body: Any, events: list[NewEvent]) -> None:
    assert events_from_body(body, **LIMITS) == events


_NAME = "String should match pattern '^[A-Za-z0-9_.:-]{1,64}$'"
_SURROGATE = (
    "event.data holds a lone UTF-16 surrogate ('\\ud83d'), which is not Unicode text: "
    "send valid UTF-8 (escape pairs like \\ud83d\\ude00 together)"
)


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ([{"data": 1}], "invalid_body", "request body must be a JSON object"),
        (
            {"events": [{"data": 1}], "data": 2},
            "invalid_body",
            'a batch body has only the key "events"',
        ),
        ({"events": []}, "invalid_body", '"events" must be a non-empty array'),
        ({"events": {"data": 1}}, "invalid_body", '"events" must be a non-empty array'),
        (
            {"data": 1, "event": "ok", "extra": True},
            "invalid_event",
            "event.extra: Extra inputs are not permitted",
        ),
        ({"event": "ok"}, "invalid_event", "event.data: Field required"),
        (
            {"events": [5, {"data": 1}]},
            "invalid_event",
            "events[0].body: Input should be a valid dictionary or instance of EventIn",
        ),
        (
            {"data": {1: 2}},
            "invalid_event",
            "event.data.dict.1.[key]: Input should be a valid string",
        ),
        ({"events": [{"data": 1}] * 6}, "batch_too_large", "a batch holds at most 5 events, got 6"),
        (
            {"events": [{"data": "x" * 2000}]},
            "payload_too_large",
            "event.data is 2002 bytes as JSON; the limit is 1024",
        ),
        (
            {"data": "x" * 1023},
            "payload_too_large",
            "event.data is 1025 bytes as JSON; the limit is 1024",
        ),
        (
            {"events": [{"data": 1}, {"data": 2, "event": "bad name"}]},
            "invalid_event",
            f"events[1].event: {_NAME}",
        ),
        ({"data": 1, "event": "e" * 65}, "invalid_event", f"event.event: {_NAME}"),
        ({"data": 1, "event": 7}, "invalid_event", "event.event: Input should be a valid string"),
        (
            {"event": "reset", "data": {}},
            "invalid_event",
            "event.event: 'reset' is reserved (reserved: error, open, reset)",
        ),
        (
            {"data": float("nan")},
            "invalid_event",
            "event.data holds NaN or Infinity, which JSON cannot carry",
        ),
        ({"data": "\ud83d"}, "invalid_event", _SURROGATE),
    ],
)
def test_events_from_body_rejects_a_batch_whole(body: Any, code: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        events_from_body(body, **LIMITS)
    assert type(caught.value) is (PayloadTooLarge if code == "payload_too_large" else InvalidInput)
    assert (caught.value.code, caught.value.message) == (code, message)


def test_a_batch_over_one_items_size_is_rejected_and_one_at_it_accepted() -> None:
    limits = {"max_event_bytes": 200_000, "max_batch_events": 100}
    # Each event costs its JSON text and its name: 2 x (189_995 + 2 + 3) = 380_000.
    fits = [{"data": "x" * 189_995, "event": "abc"}] * 2
    assert [len(e.data) for e in new_events(fits, **limits)] == [189_997, 189_997]
    with pytest.raises(PayloadTooLarge) as caught:
        new_events([*fits[:1], {"data": "x" * 189_996, "event": "abc"}], **limits)
    assert caught.value.message == (
        "the events add up to more than 380000 bytes: one publish is stored as one "
        "DynamoDB item (400 KB at most); split it into several publishes"
    )


_names = st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True)


@given(st.fixed_dictionaries({"data": finite_json}, optional={"event": _names | json_values}))
def test_events_from_body_refuses_only_a_bad_name_or_too_much_data(body: Any) -> None:
    name = body.get("event")
    name_ok = name is None or (
        isinstance(name, str) and 1 <= len(name) <= 64 and set(name) <= NAME_CHARACTERS
    )
    compact = json.dumps(body["data"], ensure_ascii=False, separators=(",", ":"))
    fits = len(compact.encode()) <= LIMITS["max_event_bytes"]
    try:
        (event,) = events_from_body(body, **LIMITS)
    except InvalidInput as exc:
        assert not (name_ok and fits and name != "reset"), exc.message
        return
    assert name_ok and fits
    assert json.loads(event.data) == body["data"] and event.event == name


@given(finite_json)
def test_any_json_value_is_stored_as_its_own_json_text(value: Any) -> None:
    (event,) = events_from_body({"data": value}, max_event_bytes=10**6, max_batch_events=1)
    assert event.event is None and parse_json_body(event.data.encode()) == value


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


@pytest.mark.parametrize("name", ["a", "Z9", "room:1", "a.b_c-d", "x" * 128, "-", "..:"])
def test_check_channel_accepts_the_grammar(name: str) -> None:
    assert check_channel(name) == name


@pytest.mark.parametrize(
    "name", ["", "x" * 129, "a b", "a/b", "a#key", "é", "a\nb", "*", "y" * 200]
)
def test_check_channel_rejects_the_rest_naming_it(name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_channel(name)
    assert caught.value.code == "invalid_channel"
    assert (
        caught.value.message
        == (  # a long name shown by its first 140 characters
            f"channel name {name[:140]!r} is invalid: use 1-128 characters of A-Z a-z 0-9 _ - . :"
        )
    )


@given(st.text(max_size=200) | st.from_regex(r"[A-Za-z0-9_.:-]{1,128}", fullmatch=True))
def test_check_channel_accepts_exactly_the_grammar(name: str) -> None:
    in_grammar = 1 <= len(name) <= 128 and set(name) <= NAME_CHARACTERS
    try:
        accepted = check_channel(name) == name
    except InvalidInput:
        accepted = False
    assert accepted == in_grammar


def test_check_channels_keeps_each_once_in_order_and_counts_the_limit() -> None:
    assert check_channels(["b", "a", "b", "c", "a"], limit=3) == ["b", "a", "c"]
    with pytest.raises(InvalidInput) as none:
        check_channels([], limit=3)
    assert (none.value.code, none.value.message) == (
        "missing_channel",
        "name at least one channel: /events?channel=<name>&channel=<name>...",
    )
    with pytest.raises(InvalidInput) as many:
        check_channels(["a", "b", "c", "d"], limit=3)
    assert (many.value.code, many.value.message) == (
        "too_many_channels",
        "4 channels named; one connection takes at most 3",
    )
    with pytest.raises(InvalidInput) as bad:
        check_channels(["a", "b c"], limit=3)
    assert bad.value.code == "invalid_channel"


@pytest.mark.parametrize("key", ["k", " ", "~" * 128, "order-42/retry #1"])
def test_check_idempotency_key_accepts_printable_ascii(key: str) -> None:
    assert check_idempotency_key(key) == key


@pytest.mark.parametrize(
    ("key", "got"),
    [
        ("", "0 characters"),
        ("k" * 129, "129 characters"),
        ("é", "1 characters, not all ASCII"),
        ("a\tb", "3 characters"),
    ],
)
def test_check_idempotency_key_rejects_the_rest(key: str, got: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_idempotency_key(key)
    assert caught.value.code == "invalid_idempotency_key"
    assert caught.value.message == (
        f"Idempotency-Key must be 1-128 printable ASCII characters (got {got})"
    )
