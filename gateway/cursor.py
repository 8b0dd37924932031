"""Event ids and where a subscription starts: pure functions, no I/O.

An id is ``<epoch>-<seq>``: ``seq`` is the gapless position in the channel's
log and ``epoch`` names the log's incarnation, chosen when seq 1 is written.
If a channel's log starts over (table recreated, channel purged) the epoch
changes, so an old ``Last-Event-ID`` cannot silently resume at a seq that now
means another event. Ids use only ``[0-9a-z-]`` and stay far below 128 bytes,
which keeps ``Last-Event-ID`` a CORS-safelisted header for cross-origin
reconnects. The bare id ``0`` means "before the first event" of a channel
that has none yet.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

_EVENT_ID = re.compile(r"(?:(?P<epoch>[0-9a-f]{8})-(?P<seq>0|[1-9][0-9]{0,17}))|(?P<empty>0)")


@dataclass(frozen=True, slots=True)
class Position:
    """A point in a channel's log: after event ``seq`` of incarnation ``epoch``."""

    epoch: str | None
    seq: int

    @property
    def event_id(self) -> str:
        return "0" if self.epoch is None else f"{self.epoch}-{self.seq}"


EMPTY = Position(None, 0)


def new_epoch() -> str:
    return secrets.token_hex(4)


def parse_event_id(text: str) -> Position | None:
    """The position an id names, or None when it is not one of ours."""
    match = _EVENT_ID.fullmatch(text)
    if match is None:
        return None
    if match["empty"]:
        return EMPTY
    return Position(match["epoch"], int(match["seq"]))


class ResetReason(StrEnum):
    INVALID_ID = "invalid_last_event_id"
    NEW_INCARNATION = "channel_restarted"
    AHEAD_OF_LOG = "unknown_position"
    HISTORY_EXPIRED = "history_expired"


@dataclass(frozen=True, slots=True)
class Start:
    """Where a session begins and what it must tell the client first."""

    cursor: Position
    fresh: bool = False
    reset: ResetReason | None = None


def resolve_start(last_event_id: str | None, head: Position) -> Start:
    """Decide the start cursor for a subscription given the channel's current head."""
    if last_event_id is None:
        return Start(head, fresh=True)
    requested = parse_event_id(last_event_id)
    if requested is None:
        return Start(head, reset=ResetReason.INVALID_ID)
    if requested.epoch is None:
        # The client connected before the channel's first event: everything is new to it.
        return Start(Position(head.epoch, 0))
    if requested.epoch != head.epoch:
        return Start(Position(head.epoch, 0), reset=ResetReason.NEW_INCARNATION)
    if requested.seq > head.seq:
        return Start(head, reset=ResetReason.AHEAD_OF_LOG)
    return Start(requested)
