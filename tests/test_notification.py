"""A notification's wire form (gateway/notification.py): one append's events as far
as they fit, and nothing else accepted."""

from __future__ import annotations

import json

import pytest

from gateway.items import StoredEvent
from gateway.notification import MAX_NOTIFICATION_BYTES, decode, encode, pubsub_channel


def stored(seq: int, epoch: str = "e1", data: str = '"x"') -> StoredEvent:
    return StoredEvent(epoch, seq, data, event="t", since=1, appended_at=1.5)


def test_a_notification_carries_the_events_and_above_the_bound_only_the_newest() -> None:
    events = [stored(seq) for seq in range(4, 8)]
    assert decode(encode("p1", events)) == ("p1", events)
    big = [stored(seq, data=json.dumps("x" * 30_000)) for seq in range(1, 5)]
    body = encode("p1", big)
    assert len(body) <= MAX_NOTIFICATION_BYTES
    assert decode(body) == ("p1", big[2:])  # the new end, two of ~30 KB
    too_big = [stored(1, data=json.dumps("x" * MAX_NOTIFICATION_BYTES))]
    assert decode(encode("p1", too_big)) == ("p1", [])  # a bare wake-up


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b'{"from": "p", "events": {"epoch": "e"}}',
        b'{"from": "p", "events": [{"epoch": "e", "seq": "1"}]}',
        b"\xff\xfe",
        # Not one append's events: a gap, and two epochs.
        encode("p", [stored(1), stored(3)]),
        encode("p", [stored(1), stored(2, epoch="e2")]),
    ],
)
def test_decode_refuses_what_no_append_would_send(payload: bytes) -> None:
    with pytest.raises(ValueError):
        decode(payload)


def test_each_tables_channels_have_pub_sub_channels_of_their_own() -> None:
    names = {pubsub_channel(t, c) for t in ("a", "b") for c in ("x", "y", "")}
    assert len(names) == 6
