"""One bounded SSE session: start cursor, replay, tail, heartbeats, clean end.

A session always ends with ``retry:`` and a clean close of its 200 response:
at its deadline, when storage fails or hangs, or when its channel's log
starts over under the shared feed. EventSource gives up for good on any
non-200 answer, so trouble is reported by ending the stream and letting the
browser come back, never by a status.

No store call may outlive the session's deadline: each is bounded by what is
left of it (one at a time; a timeout must not span a generator's ``yield``),
so a hung DynamoDB cannot keep a Lambda past its own deadline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from gateway import wire
from gateway.cursor import EMPTY, Position, ResetReason, resolve_start, step
from gateway.errors import GatewayError
from gateway.hub import ChannelFeed, ChannelHub
from gateway.items import StoredEvent
from gateway.store import EventLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SessionTiming:
    deadline: float  # on the ``clock`` below
    heartbeat_seconds: float
    retry_ms: int
    clock: Callable[[], float] = time.monotonic

    def remaining(self) -> float:
        return self.deadline - self.clock()


def encode_reset(reason: ResetReason, continues_after: Position, requested: str | None) -> bytes:
    """The in-band ``reset`` event: the client's position was lost, the stream goes on
    after ``continues_after``; its id moves the browser's last event id there."""
    data = {
        "reason": reason.value,
        "last_event_id": requested[:128] if requested is not None else None,
        "continues_after": continues_after.event_id,
    }
    return wire.encode_event(
        json.dumps(data, separators=(",", ":")), event="reset", id=continues_after.event_id
    )


def encode_stored(event: StoredEvent) -> bytes:
    return wire.encode_event(event.data, event=event.event, id=event.event_id)


class _Reader:
    """A session's walk through the log: what it has delivered (``cursor``), how far
    it has read (``scanned_to``), and the frames for what comes next."""

    def __init__(self, cursor: Position, scanned_to: int, aligned: bool) -> None:
        self.cursor = cursor
        self.scanned_to = scanned_to
        self.aligned = aligned  # scanned_to ends an item (see EventLog.read_after)
        self._visited = {cursor.epoch} if cursor.epoch is not None else set()

    def frames(self, events: list[StoredEvent], feed: ChannelFeed | None) -> list[bytes]:
        frames: list[bytes] = []
        for event in events:
            cursor = self.cursor
            if event.epoch != cursor.epoch or event.seq != cursor.seq + 1:
                observed = feed.observed_after(event.epoch) if feed is not None else None
                action = step(cursor, event.epoch, event.seq, event.since, self._visited, observed)
                self._visited.add(event.epoch)
                if action is not None:
                    frames.append(
                        encode_reset(action.reset, action.continues_after, cursor.event_id)
                    )
                    if action.rewind:  # the log started over below: read it from there
                        self.cursor = action.continues_after
                        self.scanned_to, self.aligned = self.cursor.seq, False
                        return frames
            frames.append(encode_stored(event))
            self.cursor = event.position
        return frames


async def event_stream(
    channel: str,
    last_event_id: str | None,
    *,
    store: EventLog,
    hub: ChannelHub,
    timing: SessionTiming,
) -> AsyncIterator[bytes]:
    try:
        async with asyncio.timeout(timing.remaining()):
            newest = await store.last_batch(channel)
        end = newest.end if newest is not None else None
        head = Position(end.epoch, end.last) if end is not None else EMPTY
        start = resolve_start(last_event_id, head, end.since if end is not None else 1)
        if start.fresh:
            yield wire.encode_id(head.event_id)
        if start.reset is not None:
            yield encode_reset(start.reset, start.cursor, last_event_id)
        cursor = start.cursor
        if newest is not None and cursor.epoch == head.epoch and cursor.seq >= newest.first - 1:
            # The newest item holds all there is after the cursor: no read needed.
            reader = _Reader(cursor, head.seq, aligned=True)
            if frames := reader.frames(store.live_events(newest, cursor.seq), None):
                yield b"".join(frames)
        else:
            reader = _Reader(cursor, cursor.seq, aligned=False)
        async with hub.subscribe(channel, end) as feed:
            async for chunk in _tail(channel, reader, store, feed, timing):
                yield chunk
    except (GatewayError, TimeoutError) as exc:
        reason = exc.message if isinstance(exc, GatewayError) else "the store did not answer"
        logger.warning("session on channel %r ends early: %s", channel, reason)
    yield wire.encode_retry(timing.retry_ms)


async def _tail(
    channel: str,
    reader: _Reader,
    store: EventLog,
    feed: ChannelFeed,
    timing: SessionTiming,
) -> AsyncIterator[bytes]:
    clock = timing.clock
    next_heartbeat = clock() + timing.heartbeat_seconds
    while (remaining := timing.deadline - clock()) > 0:
        events = feed.after(reader.scanned_to)
        if events is None:  # older than the shared buffer: replay from the log
            async with asyncio.timeout(remaining):
                page = await store.read_after(channel, reader.scanned_to, aligned=reader.aligned)
            events, progressed = page.events, page.scanned_to > reader.scanned_to
            reader.scanned_to, reader.aligned = page.scanned_to, True
        else:
            progressed = bool(events)
            if events:
                reader.scanned_to = events[-1].seq
        if events:
            yield b"".join(reader.frames(events, feed))
            next_heartbeat = clock() + timing.heartbeat_seconds
        if progressed:
            continue
        if feed.failure is not None:
            return
        await feed.wait(min(remaining, next_heartbeat - clock()))
        if clock() >= next_heartbeat:
            yield wire.encode_comment()
            next_heartbeat = clock() + timing.heartbeat_seconds
