import pytest

from gateway.cursor import (
    EMPTY,
    Position,
    ResetReason,
    Start,
    new_epoch,
    parse_event_id,
    resolve_start,
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
        ("0", HEAD, Start(Position("0a1b2c3d", 0))),
        ("0", EMPTY, Start(EMPTY)),
        ("garbage", HEAD, Start(HEAD, reset=ResetReason.INVALID_ID)),
        ("99999999-3", HEAD, Start(Position("0a1b2c3d", 0), reset=ResetReason.NEW_INCARNATION)),
        ("99999999-3", EMPTY, Start(EMPTY, reset=ResetReason.NEW_INCARNATION)),
        ("0a1b2c3d-43", HEAD, Start(HEAD, reset=ResetReason.AHEAD_OF_LOG)),
    ],
)
def test_resolve_start_table(last_event_id: str | None, head: Position, expected: Start) -> None:
    assert resolve_start(last_event_id, head) == expected
