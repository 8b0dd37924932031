import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import wire
from tests.eventstream import EventStreamParser


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"data": "hello"}, b"data: hello\n\n"),
        ({"data": ""}, b"data: \n\n"),
        ({"data": "a\nb"}, b"data: a\ndata: b\n\n"),
        ({"data": "a\r\nb"}, b"data: a\ndata: b\n\n"),
        ({"data": "a\rb"}, b"data: a\ndata: b\n\n"),
        ({"data": "a\n\nb\n"}, b"data: a\ndata: \ndata: b\ndata: \n\n"),
        ({"data": " lead"}, b"data:  lead\n\n"),
        ({"data": "x", "event": "tick"}, b"event: tick\ndata: x\n\n"),
        ({"data": "x", "id": "ab12cd34-7"}, b"id: ab12cd34-7\ndata: x\n\n"),
        (
            {"data": '{"k":"é"}', "event": "e", "id": "1"},
            'event: e\nid: 1\ndata: {"k":"é"}\n\n'.encode(),
        ),
    ],
)
def test_encode_event_frames(kwargs: dict[str, str], expected: bytes) -> None:
    fields = dict(kwargs)  # the parameter is shared by every run of the case
    data = fields.pop("data")
    assert wire.encode_event(data, **fields) == expected


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\nb", "a\x00b", "\n"])
@pytest.mark.parametrize("field", ["event", "id"])
def test_encode_event_rejects_line_breaks_and_nul_in_fields(field: str, bad: str) -> None:
    with pytest.raises(wire.FieldError, match=rf"^{field} must not contain CR, LF or NUL$"):
        wire.encode_event("x", **{field: bad})


def test_encode_id_retry_and_comment() -> None:
    assert wire.encode_id("ab12cd34-3") == b"id: ab12cd34-3\n\n"
    assert wire.encode_retry(1500) == b"retry: 1500\n\n"
    assert wire.encode_retry(0) == b"retry: 0\n\n"  # reconnect at once is allowed
    assert wire.encode_comment() == b":\n\n"
    assert wire.encode_comment("hb") == b": hb\n\n"
    with pytest.raises(wire.FieldError, match=r"^retry must be a non-negative number of"):
        wire.encode_retry(-1)
    with pytest.raises(wire.FieldError, match=r"^comment must not contain CR, LF or NUL$"):
        wire.encode_comment("a\nb")
    with pytest.raises(wire.FieldError, match=r"^id must not contain CR, LF or NUL$"):
        wire.encode_id("a\rb")


def test_encode_id_frame_sets_last_event_id_without_an_event() -> None:
    parser = EventStreamParser()
    assert parser.feed(wire.encode_id("ab12cd34-9")) == []
    assert parser.last_event_id == "ab12cd34-9"


_names = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00"), min_size=1)


@given(data=st.text(), event=st.none() | _names, id=st.none() | _names)
def test_encode_event_roundtrips_through_whatwg_parser(
    data: str, event: str | None, id: str | None
) -> None:
    parser = EventStreamParser()
    events = parser.feed(wire.encode_event(data, event=event, id=id))
    # Line breaks are normalised to LF by the format; everything else survives.
    expected = data.replace("\r\n", "\n").replace("\r", "\n")
    assert len(events) == 1
    assert events[0].data == expected
    assert events[0].type == (event or "message")
    assert parser.last_event_id == (id or "")


@given(st.lists(st.text(), min_size=1, max_size=5), st.integers(1, 7))
def test_encode_event_frames_stay_separate_when_split_anywhere(
    payloads: list[str], step: int
) -> None:
    stream = b"".join(wire.encode_event(p, id=str(i)) for i, p in enumerate(payloads))
    parser = EventStreamParser()
    events = []
    for start in range(0, len(stream), step):
        events.extend(parser.feed(stream[start : start + step]))
    assert [e.last_event_id for e in events] == [str(i) for i in range(len(payloads))]
    assert [e.data for e in events] == [
        p.replace("\r\n", "\n").replace("\r", "\n") for p in payloads
    ]


@given(data=st.text(), event=st.text(), id=st.text())
def test_encode_event_never_yields_an_extra_frame_or_field(data: str, event: str, id: str) -> None:
    try:
        frame = wire.encode_event(data, event=event, id=id)
    except wire.FieldError:
        assert any(c in event + id for c in "\r\n\x00")
        return
    parser = EventStreamParser()
    events = parser.feed(frame + b"data: sentinel\n\n")
    lines = frame.decode().split("\n")
    assert [line.split(":", 1)[0] for line in lines if line][:2] == ["event", "id"]
    assert all(line.startswith("data: ") for line in lines[2:] if line)
    assert [e.type for e in events] == [event or "message", "message"]
    assert events[-1].data == "sentinel"
