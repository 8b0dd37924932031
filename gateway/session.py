"""One bounded SSE session: start cursor, replay, tail, heartbeats, clean end.

A session always ends with ``retry:`` and a clean close of its 200 response:
at its deadline, when storage fails, or when the channel's log starts over.
EventSource gives up for good on any non-200 answer, so trouble is reported
by ending the stream and letting the browser come back, never by a status.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from gateway import wire
from gateway.cursor import Position, ResetReason, resolve_start
from gateway.errors import GatewayError
from gateway.hub import ChannelFeed, ChannelHub
from gateway.store import EventLog, StoredEvent

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SessionTiming:
    deadline: float  # on the ``clock`` below
    heartbeat_seconds: float
    retry_ms: int
    clock: Callable[[], float] = time.monotonic


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


async def event_stream(
    channel: str,
    last_event_id: str | None,
    *,
    store: EventLog,
    hub: ChannelHub,
    timing: SessionTiming,
) -> AsyncIterator[bytes]:
    try:
        head = await store.head(channel)
        start = resolve_start(last_event_id, head)
        if start.fresh:
            yield wire.encode_id(head.event_id)
        if start.reset is not None:
            yield encode_reset(start.reset, start.cursor, last_event_id)
        async with hub.subscribe(channel, head) as feed:
            async for chunk in _tail(channel, start.cursor, store, feed, timing):
                yield chunk
    except GatewayError as exc:
        logger.warning("session on channel %r ends early: %s", channel, exc.message)
    yield wire.encode_retry(timing.retry_ms)


async def _tail(
    channel: str,
    cursor: Position,
    store: EventLog,
    feed: ChannelFeed,
    timing: SessionTiming,
) -> AsyncIterator[bytes]:
    clock = timing.clock
    scanned_to = cursor.seq
    next_heartbeat = clock() + timing.heartbeat_seconds
    while (remaining := timing.deadline - clock()) > 0:
        events = feed.after(scanned_to)
        if events is None:  # older than the shared buffer: replay from the log
            page = await store.read_after(channel, scanned_to)
            events, progressed = page.events, page.scanned_to > scanned_to
            scanned_to = page.scanned_to
        else:
            progressed = bool(events)
            if events:
                scanned_to = events[-1].seq
        if events:
            frames: list[bytes] = []
            for event in events:
                if cursor.epoch is not None and event.epoch != cursor.epoch:
                    # The log restarted: deliver what came before, the reconnect gets a reset.
                    if frames:
                        yield b"".join(frames)
                    return
                if event.seq != cursor.seq + 1:
                    frames.append(
                        encode_reset(
                            ResetReason.HISTORY_EXPIRED,
                            Position(event.epoch, event.seq - 1),
                            cursor.event_id,
                        )
                    )
                frames.append(encode_stored(event))
                cursor = event.position
            yield b"".join(frames)
            next_heartbeat = clock() + timing.heartbeat_seconds
        if progressed:
            continue
        if feed.failure is not None:
            return
        await feed.wait(min(remaining, next_heartbeat - clock()))
        if clock() >= next_heartbeat:
            yield wire.encode_comment()
            next_heartbeat = clock() + timing.heartbeat_seconds
