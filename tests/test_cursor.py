import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gateway.cursor import (
    EMPTY,
    Position,
    ResetReason,
    Start,
    Step,
    fingerprint,
    invalid_start,
    new_epoch,
    parse_event_id,
    resolve_position,
    resolve_start,
    rewind_start,
    rewound_cursor,
    step,
    unrewound,
)

HEAD = Position("0a1b2c3d", 42)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", EMPTY),
        ("0a1b2c3d-0", Position("0a1b2c3d", 0)),
        ("0a1b2c3d-42", Position("0a1b2c3d", 42)),
        ("ffffffff-999999999999999999", Position("ffffffff", 999999999999999999)),
        ("", None),
        ("42", None),
        ("0a1b2c3d-", None),
        ("0a1b2c3d-042", None),
        ("0A1B2C3D-1", None),
        ("0a1b2c3-1", None),
        ("0a1b2c3d-1\n", None),
        ("0a1b2c3d--1", None),
        ("0a1b2c3d-1000000000000000000", None),
        ("x" * 200, None),
    ],
)
def test_parse_event_id_table(text: str, expected: Position | None) -> None:
    assert parse_event_id(text) == expected


def test_position_event_id_roundtrips() -> None:
    for position in (EMPTY, Position(new_epoch(), 0), HEAD, Position(new_epoch(), 10**17)):
        assert parse_event_id(position.event_id) == position
        assert len(position.event_id) <= 128
        assert position.event_id.isascii()


@pytest.mark.parametrize(
    ("last_event_id", "head", "expected"),
    [
        (None, HEAD, Start(HEAD, fresh=True)),
        (None, EMPTY, Start(EMPTY, fresh=True)),
        ("0a1b2c3d-40", HEAD, Start(Position("0a1b2c3d", 40))),
        ("0a1b2c3d-42", HEAD, Start(HEAD)),
        ("0", HEAD, Start(EMPTY)),
        ("0", EMPTY, Start(EMPTY)),
        ("garbage", HEAD, Start(HEAD, reset=ResetReason.INVALID_ID)),
        # a reset keeps the client's own position as the one it holds until it
        # gets the reset (none for an id that is not ours)
        (
            "99999999-3",
            HEAD,
            Start(
                Position("0a1b2c3d", 0),
                reset=ResetReason.NEW_INCARNATION,
                held=Position("99999999", 3),
            ),
        ),
        (
            "99999999-3",
            EMPTY,
            Start(EMPTY, reset=ResetReason.HISTORY_EXPIRED, held=Position("99999999", 3)),
        ),
        (
            "0a1b2c3d-43",
            HEAD,
            Start(HEAD, reset=ResetReason.AHEAD_OF_LOG, held=Position("0a1b2c3d", 43)),
        ),
    ],
)
def test_resolve_start_table(last_event_id: str | None, head: Position, expected: Start) -> None:
    assert resolve_start(last_event_id, head) == expected


def test_resolve_start_reads_on_below_a_newer_epoch_and_restarts_after_a_purge() -> None:
    # The current epoch opened at 40, above an older one that expired: a position
    # below 40 reads on from itself (step() says what was lost); one at or above
    # 40 belonged to a log that was purged and started over.
    assert resolve_start("99999999-3", HEAD, since=40) == Start(Position("99999999", 3))
    # A log's first epoch begins at 1, unless said otherwise.
    assert resolve_position(Position("99999999", 1), HEAD) == Start(
        Position("0a1b2c3d", 0), reset=ResetReason.NEW_INCARNATION, held=Position("99999999", 1)
    )
    assert resolve_start("99999999-40", HEAD, since=40) == Start(
        Position("0a1b2c3d", 39),
        reset=ResetReason.NEW_INCARNATION,
        held=Position("99999999", 40),
    )


A, B = "aaaaaaaa", "bbbbbbbb"


@pytest.mark.parametrize(
    ("cursor", "event", "visited", "expected"),
    [
        # the next event of the same epoch, or a gap in it
        (Position(A, 4), (A, 5, 1), {A}, None),
        (Position(A, 4), (A, 7, 1), {A}, Step(ResetReason.HISTORY_EXPIRED, Position(A, 6))),
        # a new epoch that began above the cursor: A may have ended past 4 unseen
        (Position(A, 4), (B, 5, 5), {A}, Step(ResetReason.HISTORY_EXPIRED, Position(B, 4))),
        (Position(A, 4), (B, 9, 5), {A}, Step(ResetReason.HISTORY_EXPIRED, Position(B, 8))),
        (Position(A, 4), (B, 7, 7), {A}, Step(ResetReason.HISTORY_EXPIRED, Position(B, 6))),
        # the log started over below the cursor: read the new incarnation from its start
        (
            Position(A, 4),
            (B, 5, 1),
            {A},
            Step(ResetReason.NEW_INCARNATION, Position(B, 0), rewind=True),
        ),
        # ... as it did when the new epoch began at the cursor's own seq
        (
            Position(A, 4),
            (B, 4, 4),
            {A},
            Step(ResetReason.NEW_INCARNATION, Position(B, 3), rewind=True),
        ),
        # ... but never twice into one epoch (a hand-mixed log): say so and go on
        (Position(B, 4), (A, 5, 1), {A, B}, Step(ResetReason.NEW_INCARNATION, Position(A, 4))),
        # a reader that came to an empty log
        (EMPTY, (A, 1, 1), set(), None),
        (EMPTY, (A, 3, 1), set(), Step(ResetReason.HISTORY_EXPIRED, Position(A, 2))),
        # an epoch that opened above older, expired events the reader never saw
        (EMPTY, (B, 11, 11), set(), Step(ResetReason.HISTORY_EXPIRED, Position(B, 10))),
    ],
)
def test_step_table(
    cursor: Position, event: tuple[str, int, int], visited: set[str], expected: Step | None
) -> None:
    assert step(cursor, *event, visited) == expected


def test_step_delivers_a_new_epoch_a_feed_saw_begin_right_after_the_cursor() -> None:
    assert step(Position(A, 4), B, 5, 5, {A}, observed_after=Position(A, 4)) is None
    assert step(Position(A, 3), B, 5, 5, {A}, observed_after=Position(A, 4)) == Step(
        ResetReason.HISTORY_EXPIRED, Position(B, 4)
    )


def test_what_a_client_holds_before_its_first_frame() -> None:
    assert resolve_start(None, HEAD).client_position == HEAD
    assert resolve_start("0a1b2c3d-40", HEAD).client_position == Position("0a1b2c3d", 40)
    assert resolve_start("0a1b2c3d-43", HEAD).client_position == Position("0a1b2c3d", 43)
    assert resolve_start("garbage", HEAD).client_position == EMPTY


@given(
    st.from_regex(r"[0-9a-f]{8}", fullmatch=True),
    st.integers(1, 10**6),
    st.floats(0, 2**36),
    st.lists(st.floats(0.51, 100), min_size=1, max_size=40),
)
def test_epochs_a_channel_opens_within_2048_retentions_never_share_a_fingerprint(
    above: str, retention: int, first: float, gaps: list[float]
) -> None:
    # Each opening follows the last by more than half a retention: a retention,
    # less a clock skew below half of it (``new_epoch`` says why).
    openings = [first]
    for gap in gaps:
        openings.append(openings[-1] + gap * retention)
    assume(openings[-1] - first < 2047 * retention)
    opened = [new_epoch(above, at, retention) for at in openings]
    assert all(parse_event_id(f"{epoch}-1") == Position(epoch, 1) for epoch in opened)
    assert len({fingerprint(epoch) for epoch in opened}) == len(opened)


def test_fingerprints_repeat_after_2048_retentions() -> None:
    first = new_epoch("0a1b2c3d", 1_000_000.0, 600)
    assert fingerprint(new_epoch("0a1b2c3d", 1_000_000.0 + 2047 * 600, 600)) != fingerprint(first)
    assert fingerprint(new_epoch("0a1b2c3d", 1_000_000.0 + 2048 * 600, 600)) == fingerprint(first)


@pytest.mark.parametrize(
    ("rewind", "since", "cursor"),
    [(0, 1, 42), (1, 1, 41), (10, 1, 32), (42, 1, 0), (1000, 1, 0), (10, 40, 39), (2, 40, 40)],
)
def test_a_rewind_counts_back_from_the_head_no_further_than_its_epoch(
    rewind: int, since: int, cursor: int
) -> None:
    start = resolve_start(None, HEAD, since, rewind)
    assert start == Start(
        Position(HEAD.epoch, cursor), fresh=True, rewound_from=HEAD if rewind else None
    )
    assert start.client_position == Position(HEAD.epoch, cursor)


def test_a_rewind_of_an_empty_log_starts_before_its_first_event() -> None:
    assert rewind_start(EMPTY, 1, 20) == Start(EMPTY, fresh=True)


def test_a_position_of_ours_ignores_the_rewind() -> None:
    assert resolve_start("0a1b2c3d-40", HEAD, 1, 20) == Start(Position(HEAD.epoch, 40))


def test_an_id_not_ours_starts_where_a_rewind_does_with_a_reset() -> None:
    start = resolve_start("garbage", HEAD, 1, 5)
    assert start == invalid_start(HEAD, 1, 5)
    assert start == Start(Position(HEAD.epoch, 37), reset=ResetReason.INVALID_ID, rewound_from=HEAD)
    assert start.client_position == EMPTY  # nothing is claimed before the reset


@pytest.mark.parametrize(
    ("epoch", "seq", "stands_at"),
    [
        (HEAD.epoch, 33, 32),  # the rewind's first event: no gap
        (HEAD.epoch, 40, 39),  # older ones expired: the retained log begins here
        (HEAD.epoch, 42, 41),
        (HEAD.epoch, 43, 42),  # nothing of the window retained: at the head
        ("0b000000", 43, 42),  # a new epoch above: as a reader at the head
        ("0b000000", 1, 42),  # the log started over: as a reader at the head
    ],
)
def test_a_rewound_reader_stands_right_before_the_first_retained_event_of_its_window(
    epoch: str, seq: int, stands_at: int
) -> None:
    cursor = Position(HEAD.epoch, 32)
    expected = Position(HEAD.epoch, stands_at)
    assert rewound_cursor(cursor, HEAD, epoch, seq) == expected


def test_a_rewind_over_a_log_that_retains_none_of_it_starts_at_the_head() -> None:
    # Where the reader would stand at its first event anyway (rewound_cursor): the
    # client holds the head's id, as a fresh session without a rewind does.
    assert unrewound(rewind_start(HEAD, 1, 10)) == rewind_start(HEAD, 1, 0)
    assert unrewound(invalid_start(HEAD, 1, 10)) == invalid_start(HEAD, 1, 0)
    resumed = resolve_start("0a1b2c3d-40", HEAD, 1, 10)
    assert unrewound(resumed) == resumed  # a position of the client's own is kept
