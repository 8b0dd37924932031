"""The composite cursor of multi-channel sessions: size, alphabet, and what each
requested channel reads back from it."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import composite
from gateway.composite import Entry, Requested
from gateway.cursor import EMPTY, Position, ResetReason, Start

CHANNEL = st.from_regex(r"[A-Za-z0-9_.:-]{1,32}", fullmatch=True)
EPOCH = st.from_regex(r"[0-9a-f]{8}", fullmatch=True)
POSITION = st.one_of(
    st.just(EMPTY), st.builds(Position, EPOCH, st.integers(min_value=0, max_value=2**62))
)
SAFE = re.compile(r"[0-9A-Za-z._~-]*")


def _entry(position: Position) -> Entry:
    if position.epoch is None:
        return Entry(None, 0)
    return Entry(composite.epoch_fingerprint(position.epoch), position.seq)


@given(st.dictionaries(CHANNEL, POSITION, min_size=1, max_size=16))
def test_every_channel_reads_back_its_own_position(positions: dict[str, Position]) -> None:
    cursor = composite.encode(positions)
    assert SAFE.fullmatch(cursor)
    tags = [composite.channel_tag(c) for c in positions]
    decoded = composite.decode(cursor, list(positions))
    assert decoded is not None
    for channel, position in positions.items():
        if tags.count(composite.channel_tag(channel)) == 1:
            assert decoded[channel] == Requested(_entry(position))


def test_the_cursor_format_is_stable_across_versions() -> None:
    # A cursor outlives the process that wrote it (a deploy, another Lambda
    # instance): the tags, fingerprints and digits are a format, not a detail.
    assert [composite.channel_tag(c) for c in ("orders:1", "user:7", "jobs")] == ["5J", "IL", "XZ"]
    positions = {
        "orders:1": Position("abcdef01", 5),
        "user:7": Position("0123abcd", 2**20 + 3),
        "jobs": EMPTY,
    }
    # An epoch known only by its fingerprint (an old one's) keeps it.
    assert composite.epoch_fingerprint("~abc") == composite.epoch_fingerprint("abcdef01") == 0xABC
    cursor = "XZ.5Jq8bILAS1000Z"
    assert composite.encode(positions) == cursor
    assert composite.decode(cursor, list(positions)) == {
        "orders:1": Requested(Entry(0xABC, 5)),
        "user:7": Requested(Entry(0x012, 2**20 + 3)),
        "jobs": Requested(Entry(None, 0)),
    }


@given(st.lists(st.integers(min_value=0, max_value=2**20 - 1), min_size=16, max_size=16), EPOCH)
def test_sixteen_channels_fit_in_128_bytes(seqs: list[int], epoch: str) -> None:
    positions = {f"channel:{i}": Position(epoch, seq) for i, seq in enumerate(seqs)}
    assert len(composite.encode(positions)) <= 128


@given(
    st.dictionaries(CHANNEL, POSITION, min_size=1, max_size=8),
    st.lists(CHANNEL, min_size=1, max_size=8),
)
def test_a_request_for_other_channels_reads_only_theirs(
    positions: dict[str, Position], request: list[str]
) -> None:
    decoded = composite.decode(composite.encode(positions), request)
    assert decoded is not None
    assert set(decoded) == set(request)
    all_tags = [composite.channel_tag(c) for c in {*positions, *request}]
    for channel in request:
        if all_tags.count(composite.channel_tag(channel)) > 1:
            continue  # a collision: covered below
        expected = Requested(_entry(positions[channel])) if channel in positions else Requested()
        assert decoded[channel] == expected


def _colliding_pair() -> tuple[str, str]:
    seen: dict[str, str] = {}
    for n in itertools.count():
        channel = f"c{n}"
        tag = composite.channel_tag(channel)
        if tag in seen:
            return seen[tag], channel
        seen[tag] = channel
    raise AssertionError("unreachable")


def test_channels_sharing_a_tag_keep_their_entries_apart_or_reset() -> None:
    first, second = sorted(_colliding_pair())
    a, b = Position("aaaaaaaa", 3), Position("bbbbbbbb", 9)
    cursor = composite.encode({first: a, second: b})
    both = composite.decode(cursor, [second, first])
    assert both == {first: Requested(_entry(a)), second: Requested(_entry(b))}
    # One of the two alone cannot tell which entry is its own: start over, and say so.
    alone = composite.decode(cursor, [first])
    assert alone == {first: Requested(ambiguous=True)}
    head = Position("cccccccc", 20)
    assert alone[first].start(head, 1) == Start(head, reset=ResetReason.INVALID_ID)


@pytest.mark.parametrize(
    "cursor", ["not a cursor", "abcdef01-5", "AA", "AAAA0", "AA.~", "AAAAA" + "0" * 20 + "W"]
)
def test_a_cursor_that_is_not_ours_is_refused_whole(cursor: str) -> None:
    assert composite.decode(cursor, ["a"]) is None


HEAD = Position("abcdef01", 50)


@pytest.mark.parametrize(
    ("entry", "since", "start"),
    [
        # the same epoch: resume after the position, or say it is ahead of the log
        (Entry(0xABC, 40), 1, Start(Position("abcdef01", 40))),
        (
            Entry(0xABC, 60),
            1,
            Start(HEAD, reset=ResetReason.AHEAD_OF_LOG, held=Position("abcdef01", 60)),
        ),
        # the slot just below the epoch's first event is the epoch's own "before its
        # first event", as a session at a new incarnation's start encodes it
        (Entry(0xABC, 40), 41, Start(Position("abcdef01", 40))),
        # another epoch that the current one began after: read on from the position
        (Entry(0x123, 30), 41, Start(Position("~123", 30))),
        # a fingerprint that matches below where the epoch began is another epoch too
        (Entry(0xABC, 30), 41, Start(Position("~abc", 30))),
        (Entry(0xABC, 39), 41, Start(Position("~abc", 39))),
        # another epoch at or above where the current one began: it started over
        (
            Entry(0x123, 45),
            41,
            Start(
                Position("abcdef01", 40),
                reset=ResetReason.NEW_INCARNATION,
                held=Position("~123", 45),
            ),
        ),
        (Entry(None, 0), 1, Start(EMPTY)),
    ],
)
def test_where_a_cursor_entry_starts(entry: Entry, since: int, start: Start) -> None:
    assert Requested(entry).start(HEAD, since) == start


def test_a_channel_missing_from_the_cursor_starts_fresh_at_its_head() -> None:
    assert Requested().start(HEAD, 1) == Start(HEAD, fresh=True)
