"""Event ids and where a subscription starts: pure functions, no I/O.

An id is ``<epoch>-<seq>``: ``seq`` is the gapless position in the channel's
log and ``epoch`` names the log's incarnation, chosen when seq 1 is written.
If a channel's log starts over (table recreated, channel purged) the epoch
changes, so an old ``Last-Event-ID`` cannot silently resume at a seq that now
means another event. Ids use only ``[0-9a-z-]`` and stay far below 128 bytes,
which keeps ``Last-Event-ID`` a CORS-safelisted header for cross-origin
reconnects. The bare id ``0`` means "before the first event" of a channel
that has none yet.

A reader walks the log in seq order and meets epochs in three ways
(``step``): a new epoch that began after its position (the old one expired
and an append opened a new epoch above it), one that began at or below its
position (the channel was purged and started over: go back to where it
began, once), or, in a log mixed by a hand edit, an epoch it has already been
in: say so with a ``reset`` and go on, so no reader can loop.

A subscription with no position of its own (no ``Last-Event-ID``, or one that
is not ours) starts at the head, or ``rewind`` events before it
(``rewind_start``): never further back than where the head's epoch began, and
what of those events has expired is no loss to a client that never held them
(``rewound_cursor``), so a rewind past the retained log starts at its oldest
event without a ``reset``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Collection
from dataclasses import dataclass, replace
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


# An epoch's first three hex digits are its fingerprint in a composite cursor
# (``gateway.composite``), where an entry has room for 12 bits of it.
FINGERPRINT_DIGITS = 3


def fingerprint(epoch: str) -> int:
    return int(epoch[:FINGERPRINT_DIGITS], 16)


def new_epoch(above: str | None = None, opened_at: float = 0.0, retention: int = 1) -> str:
    """A name for a new incarnation of a log, opened at ``opened_at`` above an item of
    epoch ``above``, or from nothing (None: a purge, a new table).

    One opened above an item takes as its fingerprint the half-retentions since
    1970 at its opening, mod 4096. Of two epochs of a channel, the later opens
    only once every item of the earlier has expired (the one it follows, by its
    writer's clock; or, where TTL deleted them all, by AWS's), and each item
    expires at least a retention after its epoch opened: the two openings lie at
    least a retention apart, less the writers' clock skew, and so in different
    half-retentions while the skew stays below half the retention. No two such
    epochs opened within 2048 retentions of each other share a fingerprint, even
    where TTL deleted one whole and the next opened below it again (a successor
    of ``above``'s fingerprint would there repeat the deleted epoch's, and a
    composite cursor of it would pass for the new one, skipping its first
    events). An epoch from nothing gets a random name: it and any other epoch
    share a fingerprint with a 1 in 4096 chance, as epochs either side of a
    change of the retention (which shifts the count) do."""
    if above is None:
        return secrets.token_hex(4)
    counted = int(opened_at // (retention / 2)) % 16**FINGERPRINT_DIGITS
    random_digits = secrets.token_hex(4)[FINGERPRINT_DIGITS:]
    return f"{counted:0{FINGERPRINT_DIGITS}x}{random_digits}"


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
    """Where a session begins and what it must tell the client first. ``held`` is
    the position the client holds until it gets that reset: its own, when it is
    one of ours, else ``EMPTY`` (no id may claim what the client has not seen)."""

    cursor: Position
    fresh: bool = False
    reset: ResetReason | None = None
    held: Position = EMPTY
    rewound_from: Position | None = None  # the head a rewind counted back from

    @property
    def client_position(self) -> Position:
        """The client's position before the session's first frame."""
        return self.cursor if self.reset is None else self.held


def resolve_start(
    last_event_id: str | None, head: Position, since: int = 1, rewind: int = 0
) -> Start:
    """The start cursor of a subscription, given the channel's newest position
    ``head`` and the first seq of its epoch, ``since``; ``rewind`` counts back from
    the head where the client holds no position of ours."""
    if last_event_id is None:
        return rewind_start(head, since, rewind)
    requested = parse_event_id(last_event_id)
    if requested is None:
        return invalid_start(head, since, rewind)
    return resolve_position(requested, head, since)


def rewind_start(head: Position, since: int, rewind: int) -> Start:
    """A fresh subscription ``rewind`` events before ``head`` (0: at the head)."""
    if rewind == 0 or head.epoch is None:
        return Start(head, fresh=True)
    # Below since, the log is another incarnation's, all expired or purged.
    cursor = Position(head.epoch, max(head.seq - rewind, since - 1))
    return Start(cursor, fresh=True, rewound_from=head)


def invalid_start(head: Position, since: int, rewind: int) -> Start:
    """A subscription whose id is not ours: where a fresh one starts, with a reset."""
    start = rewind_start(head, since, rewind)
    return Start(start.cursor, reset=ResetReason.INVALID_ID, rewound_from=start.rewound_from)


def unrewound(start: Start) -> Start:
    """``start`` without its rewind, for a log that retains none of the events it
    counts back over (the head's own item has expired): at the head, where
    ``rewound_cursor`` would put the reader at its first event anyway. The client
    holds the head's id until then, as without a rewind: a position before it would
    claim a stretch the log no longer holds, and a reconnect from there would be
    told that history expired."""
    if start.rewound_from is None:
        return start
    return replace(start, cursor=start.rewound_from, rewound_from=None)


def rewound_cursor(cursor: Position, head: Position, epoch: str, seq: int) -> Position:
    """Where a reader that rewound to ``cursor`` from ``head`` stands when the first
    event it meets is ``<epoch>-<seq>``: right before it when it lies within the
    rewind (the retained log begins there), else at ``head``, as a reader that
    started there would (nothing the rewind reached for was retained)."""
    if epoch == head.epoch and cursor.seq < seq <= head.seq:
        return Position(epoch, seq - 1)
    return head


def resolve_position(requested: Position, head: Position, since: int = 1) -> Start:
    """The start cursor of a subscription that resumes after ``requested``."""
    if requested.epoch is None:
        # The client came before the channel's first event: what the log holds is new
        # to it (and step() tells it what expired unseen).
        return Start(EMPTY)
    if head.epoch is None:
        return Start(EMPTY, reset=ResetReason.HISTORY_EXPIRED, held=requested)
    if requested.epoch == head.epoch:
        if requested.seq > head.seq:
            return Start(head, reset=ResetReason.AHEAD_OF_LOG, held=requested)
        return Start(requested)
    if requested.seq < since:
        # The current epoch began above the position: read on from it, so no live
        # event in between is skipped; step() says what was lost on the way.
        return Start(requested)
    # The channel was purged and started over: its new incarnation is all new.
    restarted = Position(head.epoch, since - 1)
    return Start(restarted, reset=ResetReason.NEW_INCARNATION, held=requested)


@dataclass(frozen=True, slots=True)
class Step:
    """A reader at a cursor cannot simply deliver the next event: it tells the
    client its position was lost (``reset``), continuing after ``continues_after``;
    with ``rewind``, it reads again from there instead of delivering the event (the
    log started over below the cursor)."""

    reset: ResetReason
    continues_after: Position
    rewind: bool = False


def step(
    cursor: Position,
    epoch: str,
    seq: int,
    since: int,
    visited: Collection[str],
    observed_after: Position | None = None,
) -> Step | None:
    """What a reader at ``cursor`` does with the next event, ``<epoch>-<seq>`` of an
    epoch that began at ``since``: None to deliver it as it is.

    ``visited`` holds the epochs this reader has already been in. A new epoch
    only proves that the previous one's newest surviving item had expired, not
    where it ended (TTL may have deleted items after it), so a switch to it is
    announced, unless a feed saw it begin right after ``observed_after`` while
    polling (an item lives far longer than a poll interval).
    """
    if cursor.epoch is None:  # the log was empty when the reader came
        if seq == since == 1:
            return None
        return Step(ResetReason.HISTORY_EXPIRED, Position(epoch, seq - 1))
    if epoch == cursor.epoch:
        if seq == cursor.seq + 1:
            return None
        return Step(ResetReason.HISTORY_EXPIRED, Position(epoch, seq - 1))
    if since > cursor.seq:  # a new epoch that began after the reader's position
        if observed_after == cursor and seq == cursor.seq + 1:
            return None
        return Step(ResetReason.HISTORY_EXPIRED, Position(epoch, seq - 1))
    if epoch not in visited:
        return Step(ResetReason.NEW_INCARNATION, Position(epoch, since - 1), rewind=True)
    return Step(ResetReason.NEW_INCARNATION, Position(epoch, seq - 1))
