"""Where a session on one channel starts, and what it delivers first.

A start skips nothing the client was promised and claims nothing it has not
seen: a client that holds a position of ours resumes right after it (or is told
with a reset where its stream goes on, when the log no longer holds it); a fresh
one starts at the newest position known, or ``rewind`` events before it over
what is retained. The newest position known is the running feed's when that
settles the start (no store call), or when the feed moved on while the head was
being read (an answer older than the feed restarts nothing); else the log's
head, read once for the sessions that arrive together (``ChannelHub.head``) and
again for a client whose position may be newer than that shared answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.cursor import EMPTY, Position, ResetReason, Start, unrewound
from gateway.feed import ChannelFeed
from gateway.hub import ChannelHub
from gateway.items import Batch, LogEnd
from gateway.reader import Delivery, Reader, Reset
from gateway.store import EventLog


@dataclass(slots=True)
class Opened:
    channel: str
    reader: Reader
    feed: ChannelFeed
    fresh: bool
    deliveries: list[Delivery]
    held: Position  # the client's position before the session's first frame


async def open_channel(
    channel: str,
    choose: Callable[[Position, int], Start],
    requested: str | None,
    store: EventLog,
    hub: ChannelHub,
    seconds: float,
) -> Opened:
    """Where a session on ``channel`` starts (``choose`` decides from the log's
    head), what it delivers first, and the channel's feed, subscribed (the
    session must ``hub.leave`` it), its store calls bounded by ``seconds`` (what
    is left of the session). The session has been admitted (``hub.admit``)."""
    feed = hub.joinable(channel)
    if feed is not None and (joined := _join(channel, feed, choose, requested, hub)) is not None:
        return joined
    async with asyncio.timeout(seconds):
        newest, asked_at = await hub.head(channel)  # shared with the sessions arriving meanwhile
        end, head, start = _chosen(newest, choose, store)
        if not _settled(start, head):  # the shared answer may predate the client's id
            asked_at = time.monotonic()
            newest = await store.last_batch(channel)
            end, head, start = _chosen(newest, choose, store)
    # A feed that moved on while the query was out knows more than its answer: a
    # session starts from what it knows, and the answer cannot restart it.
    feed = hub.moved_on(channel, head, asked_at)
    if feed is not None and (joined := _join(channel, feed, choose, requested, hub)) is not None:
        return joined
    deliveries = _resets(start, requested)
    cursor = start.cursor
    if newest is not None and cursor.epoch == head.epoch and cursor.seq >= newest.first - 1:
        # The newest item holds all there is after the cursor: no read needed.
        reader = Reader(cursor, head.seq, aligned=True, rewound_from=start.rewound_from)
        deliveries += reader.deliveries(store.live_events(newest, cursor.seq), None)
    else:
        reader = Reader(cursor, cursor.seq, aligned=False, rewound_from=start.rewound_from)
    feed = hub.subscribe(channel, end)
    return Opened(channel, reader, feed, start.fresh, deliveries, start.client_position)


def _join(
    channel: str,
    feed: ChannelFeed,
    choose: Callable[[Position, int], Start],
    requested: str | None,
    hub: ChannelHub,
) -> Opened | None:
    """The session at the running ``feed``, subscribed, when the newest position the
    feed has seen settles its start: the session needs no head query, and its
    catch-up comes from the feed's buffer (or the log, when older). Nothing is
    awaited between finding the feed and joining it, so it cannot stop in between."""
    head = feed.position
    start = choose(head, feed.since)
    if feed.retains_nothing:
        start = unrewound(start)
    if not _settled(start, head):
        return None
    hub.subscribe(channel, feed)
    rewound = start.rewound_from
    reader = Reader(start.cursor, start.cursor.seq, aligned=False, rewound_from=rewound)
    return Opened(
        channel, reader, feed, start.fresh, _resets(start, requested), start.client_position
    )


def _chosen(
    newest: Batch | None, choose: Callable[[Position, int], Start], store: EventLog
) -> tuple[LogEnd | None, Position, Start]:
    """The log's end and head as ``newest`` says, and the start chosen from them."""
    end = newest.end if newest is not None else None
    head = Position(end.epoch, end.last) if end is not None else EMPTY
    start = choose(head, end.since if end is not None else 1)
    if end is not None and store.has_expired(end.expires_at):
        start = unrewound(start)
    return end, head, start


def _settled(start: Start, head: Position) -> bool:
    """Whether ``start``, chosen from a ``head`` that may have been read before the
    client came, holds whatever the log's head is now: a start at that head or
    within its epoch before it (all appended since is read after it), or before
    the log's first event. A client whose position is ahead of the head, or in
    another epoch, may hold what was appended since: its head is read again."""
    return start.reset in (None, ResetReason.INVALID_ID) and start.cursor.epoch in (
        None,
        head.epoch,
    )


def _resets(start: Start, requested: str | None) -> list[Delivery]:
    return [Reset(start.reset, start.cursor, requested)] if start.reset is not None else []
