"""The log's items and where the next append goes (gateway/items.py): pure, no table."""

from __future__ import annotations

import hashlib
import json

import pytest

from gateway.cursor import Position
from gateway.items import (
    Batch,
    IdempotencyRecord,
    LogEnd,
    NewEvent,
    Placement,
    StoredEvent,
    batch_item,
    decode_batch,
    decode_idempotency_record,
    idempotency_key_item,
    idempotency_record,
    place,
    request_digest,
    stored_events,
)

NOW = 1_000_000.0
END = LogEnd("aaaaaaaa", since=3, last=9, expires_at=1_000_600, key=8, write_id="w1")


def _new_epoch(above: str | None, now: float, retention: int) -> str:
    # A log from nothing gets a fresh epoch; one opened above END's epoch its successor.
    return {None: "bbbbbbbb", "aaaaaaaa": "aabbbbbb"}[above]


@pytest.mark.parametrize(
    ("now", "trusted"),
    [
        (1_000_000.0, True),
        (1_000_589.9, True),  # just over the margin from expiry
        (1_000_590.0, False),  # exactly the margin away: a write may land after the expiry
        (1_000_595.0, False),  # unexpired, but within the margin
        (1_000_600.0, False),
        (1_000_700.0, False),
    ],
)
def test_a_log_end_is_trusted_only_further_than_the_margin_from_its_expiry(
    now: float, trusted: bool
) -> None:
    assert END.trusted(now, margin=10.0) is trusted


def test_the_first_append_opens_an_epoch_at_one() -> None:
    assert place(None, now=NOW + 0.7, retention=600, new_epoch=_new_epoch) == Placement(
        "bbbbbbbb", 1, 1, 1_000_600
    )


def test_an_append_after_a_live_end_continues_its_epoch() -> None:
    assert place(END, now=NOW, retention=900, new_epoch=_new_epoch) == Placement(
        "aaaaaaaa", 3, 10, 1_000_900, follows=END
    )


def test_an_append_after_an_expired_end_opens_an_epoch_above_it() -> None:
    for now in (1_000_600.0, 1_000_601.0):  # expired from its expiry second on
        assert place(END, now=now, retention=600, new_epoch=_new_epoch) == Placement(
            "aabbbbbb", 10, 10, int(now) + 600, follows=END
        )


def test_an_append_never_expires_before_the_end_it_follows() -> None:
    # A writer whose clock is behind (or whose retention is shorter) keeps the
    # predecessor's expiry: the expired items of a channel stay a prefix of its log.
    behind = place(END, now=NOW - 500, retention=600, new_epoch=_new_epoch)
    assert behind == Placement("aaaaaaaa", 3, 10, END.expires_at, follows=END)
    ahead = place(END, now=NOW + 1, retention=600, new_epoch=_new_epoch)
    assert ahead.expires_at == END.expires_at + 1


def test_stored_events_number_a_batch_from_its_placement() -> None:
    placement = Placement("bbbbbbbb", 4, 7, 1_000_600)
    events = stored_events(placement, [NewEvent("1"), NewEvent('"x"', "tick")], NOW + 0.12345)
    assert events == (
        StoredEvent("bbbbbbbb", 7, "1", None, 4, 1_000_000.123),
        StoredEvent("bbbbbbbb", 8, '"x"', "tick", 4, 1_000_000.123),
    )
    assert [e.position for e in events] == [Position("bbbbbbbb", 7), Position("bbbbbbbb", 8)]
    assert events[1].event_id == "bbbbbbbb-8"


def test_a_batch_is_one_item_and_decodes_to_itself() -> None:
    events = (
        StoredEvent("bbbbbbbb", 7, "1", None, 4, 1_000_000.5),
        StoredEvent("bbbbbbbb", 8, '"x"', "tick", 4, 1_000_000.5),
    )
    batch = Batch(events, 1_000_600, "w2")
    item = batch_item("room", batch)
    assert item == {
        "channel": {"S": "room"},
        "seq": {"N": "7"},
        "epoch": {"S": "bbbbbbbb"},
        "since": {"N": "4"},
        "appended_at": {"N": "1000000.5"},
        "wid": {"S": "w2"},
        "expires_at": {"N": "1000600"},
        "events": {
            "L": [
                {"M": {"data": {"S": "1"}}},
                {"M": {"data": {"S": '"x"'}, "event": {"S": "tick"}}},
            ]
        },
    }
    assert decode_batch(item) == batch
    assert batch.first == 7
    assert batch.end == LogEnd("bbbbbbbb", 4, 8, 1_000_600, 7, "w2")


def test_an_idempotency_record_names_its_append_and_expires_with_it() -> None:
    events = (StoredEvent("bbbbbbbb", 7, "1"), StoredEvent("bbbbbbbb", 8, "2"))
    digest = request_digest([NewEvent("1"), NewEvent("2")])
    record = idempotency_record("room", "key-1", digest, Batch(events, 1_000_600, "w2"))
    assert record == {
        "channel": {"S": "room#key-1"},
        "seq": {"N": "0"},
        "digest": {"S": digest},
        "epoch": {"S": "bbbbbbbb"},
        "first": {"N": "7"},
        "count": {"N": "2"},
        "wid": {"S": "w2"},
        "expires_at": {"N": "1000600"},
    }
    assert idempotency_key_item("room", "key-1") == {
        "channel": {"S": "room#key-1"},
        "seq": {"N": "0"},
    }
    lone = idempotency_record("room", "k", digest, Batch(events[:1], 1_000_600, "w3"))
    assert (lone["epoch"], lone["first"], lone["count"]) == (
        {"S": "bbbbbbbb"},
        {"N": "7"},
        {"N": "1"},
    )
    decoded = decode_idempotency_record(record)
    assert decoded == IdempotencyRecord(digest, "bbbbbbbb", 7, 2, "w2")
    assert decoded.events([NewEvent("1"), NewEvent("2", "e")]) == [
        StoredEvent("bbbbbbbb", 7, "1"),
        StoredEvent("bbbbbbbb", 8, "2", "e"),
    ]


def test_a_request_digest_stands_for_exactly_its_events() -> None:
    one = request_digest([NewEvent("1", "a"), NewEvent("2")])
    canonical = json.dumps([["a", "1"], [None, "2"]], separators=(",", ":"))
    assert one == hashlib.sha256(canonical.encode()).hexdigest()
    others = [
        [NewEvent("1", "a")],
        [NewEvent("2"), NewEvent("1", "a")],
        [NewEvent("1"), NewEvent("2")],
        [NewEvent("1", "a"), NewEvent("2", "b")],
    ]
    assert one not in {request_digest(events) for events in others}
