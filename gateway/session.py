"""One bounded SSE session: start cursor, replay, tail, heartbeats, clean end.

A session always ends with ``retry:`` and a clean close of its 200 response:
at its deadline (or its token's expiry), after delivering nothing for the idle
time when that is set (with the longer idle retry), when storage fails or
hangs, or when a channel's log starts over under the shared feed.
EventSource gives up for good on any non-200 answer, so trouble is reported by
ending the stream and letting the browser come back, never by a status.

A session follows one channel (``/channels/{channel}/events``: frames as
published, ids of the channel's own log; here) or several (``/events``, see
``gateway.multiplex``). Both walk each channel's log with the reader and tail
loop below, so every per-channel guarantee holds for each channel of a
multi-channel session.

Where a session starts on each channel, and what it delivers first, is
``gateway.opening``'s.

A single-channel session that has caught up with its channel's feed lets the
feed write new frames to its stream itself (``gateway.fanout``), until the
frames no longer follow its position as they are, or a write has to wait; it
then reads the feed's buffer (or the log) again with its reader.

No store call may outlive the session's deadline: each is bounded by what is
left of it (one at a time; a timeout must not span a generator's ``yield``),
so a hung DynamoDB cannot keep a Lambda past its own deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from gateway import wire
from gateway.cursor import Position, resolve_start
from gateway.errors import FeedLimitReached, GatewayError, LogRestarted, ShuttingDown
from gateway.fanout import Attached, Outlet
from gateway.feed import ChannelFeed
from gateway.hub import ChannelHub
from gateway.items import StoredEvent
from gateway.metrics import Metrics
from gateway.opening import Opened, open_channel
from gateway.reader import Delivery, Reset, encode_delivery
from gateway.store import EventLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SessionTiming:
    deadline: float  # on time.monotonic
    heartbeat_seconds: float
    retry_ms: int
    overload_retry_ms: int = 0  # after a limit or a store error (jittered by the app)
    idle_seconds: float | None = None  # end a session that delivered nothing this long
    idle_retry_ms: int = 0
    token_bound: bool = False  # the deadline is the token's expiry

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


class End(StrEnum):
    """Why a session ended (all but a client's disconnect end with ``retry:``)."""

    DEADLINE = "deadline"
    TOKEN_EXPIRED = "token_expired"
    IDLE = "idle"
    STORE_ERROR = "store_error"
    RESTART = "restart"
    SHUTDOWN = "shutdown"
    LIMIT = "limit"


Framing = Callable[[Opened, list[Delivery]], bytes]
Body = AsyncGenerator[bytes | End, None]


async def run_session(
    body: Body, channels: Sequence[str], timing: SessionTiming, metrics: Metrics
) -> AsyncIterator[bytes]:
    """What every session does around its ``body`` (frames, then why it ended):
    counts itself open, turns trouble into an early end, ends with ``retry:``
    (the longer idle retry after an idle end; after a limit or a store error, the
    overload retry, so that refused clients do not all come back every second),
    and counts why it ended."""
    end = End.STORE_ERROR
    metrics.session_started()
    ended = False
    try:
        try:
            async for chunk in body:
                if isinstance(chunk, End):
                    end = chunk
                else:
                    yield chunk
        except (GatewayError, TimeoutError) as exc:
            end = End.LIMIT if isinstance(exc, FeedLimitReached) else End.STORE_ERROR
            reason = exc.message if isinstance(exc, GatewayError) else "the store did not answer"
            logger.warning("session on channels %s ends early: %s", ", ".join(channels), reason)
        if end is End.DEADLINE and timing.token_bound:
            end = End.TOKEN_EXPIRED
        ended = True
        yield wire.encode_retry(_retry_ms(end, timing))
    finally:
        await body.aclose()  # a client that left: the body leaves its feeds now
        metrics.session_ended(end.value if ended else "disconnect")


def _retry_ms(end: End, timing: SessionTiming) -> int:
    if end is End.IDLE:
        return timing.idle_retry_ms
    if end in (End.LIMIT, End.STORE_ERROR):
        return max(timing.retry_ms, timing.overload_retry_ms)
    return timing.retry_ms


def event_stream(
    channel: str,
    last_event_id: str | None,
    outlet: Outlet | None = None,
    *,
    rewind: int = 0,
    store: EventLog,
    hub: ChannelHub,
    timing: SessionTiming,
    metrics: Metrics,
) -> AsyncIterator[bytes]:
    """The session of the single-channel endpoint: frames as published, ids of the
    channel's own log; without a ``last_event_id``, it starts ``rewind`` events
    before the head."""
    body = _single(channel, last_event_id, rewind, outlet, store, hub, timing, metrics)
    return run_session(body, [channel], timing, metrics)


async def _single(
    channel: str,
    last_event_id: str | None,
    rewind: int,
    outlet: Outlet | None,
    store: EventLog,
    hub: ChannelHub,
    timing: SessionTiming,
    metrics: Metrics,
) -> Body:
    hub.admit([channel])  # before any store call: a refusal costs nothing
    opened = await open_channel(
        channel,
        lambda head, since: resolve_start(last_event_id, head, since, rewind),
        last_event_id,
        store,
        hub,
        timing.remaining(),
    )
    try:
        if opened.fresh:
            yield wire.encode_id(opened.held.event_id)  # before what it delivers first
        if opened.deliveries:
            report(metrics, opened.deliveries)
            yield _plain(opened, opened.deliveries)
        async for chunk in tail([opened], store, timing, _plain, metrics, outlet):
            yield chunk
    finally:
        hub.leave(opened.feed)


def report(metrics: Metrics, deliveries: Sequence[Delivery]) -> None:
    metrics.delivered([d.appended_at for d in deliveries if isinstance(d, StoredEvent)])
    for d in deliveries:
        if isinstance(d, Reset):
            metrics.reset(d.reason.value)


def _plain(opened: Opened, deliveries: list[Delivery]) -> bytes:
    # Every session on the channel sends an event's frame as is: encode it once.
    frame = opened.feed.frame
    return b"".join(
        frame(d) if isinstance(d, StoredEvent) else encode_delivery(d) for d in deliveries
    )


async def tail(
    following: list[Opened],
    store: EventLog,
    timing: SessionTiming,
    framing: Framing,
    metrics: Metrics,
    outlet: Outlet | None = None,
) -> AsyncIterator[bytes | End]:
    """Deliver what each channel's feed (or, behind it, the log) holds after the
    session's position, until the deadline; the last item says why it ended.
    With the ``outlet`` of a single channel's stream, the feed writes to it while
    the session is caught up."""
    clock = time.monotonic
    next_heartbeat = clock() + timing.heartbeat_seconds
    idle_until = clock() + timing.idle_seconds if timing.idle_seconds is not None else None
    while (remaining := timing.deadline - clock()) > 0:
        chunks = []
        progressed = False
        for f in following:
            reader = f.reader
            events = f.feed.after(reader.scanned_to)
            if events is None:  # older than the shared buffer: replay from the log
                async with asyncio.timeout(remaining):
                    page = await store.read_after(
                        f.channel, reader.scanned_to, aligned=reader.aligned
                    )
                events, progressed = page.events, progressed or page.scanned_to > reader.scanned_to
                reader.scanned_to, reader.aligned = page.scanned_to, True
            elif events:
                progressed = True
                # A feed's events may end inside an item (handed over by a member
                # of a group commit): a later read of the log looks back for it.
                reader.scanned_to, reader.aligned = events[-1].seq, False
            if events:
                deliveries = reader.deliveries(events, f.feed)
                report(metrics, deliveries)
                chunks.append(framing(f, deliveries))
        if chunks:
            yield b"".join(chunks)
            next_heartbeat = clock() + timing.heartbeat_seconds
            if idle_until is not None:
                idle_until = clock() + (timing.idle_seconds or 0)
        if progressed:
            continue
        if failure := next((f.feed.failure for f in following if f.feed.failure), None):
            yield _FAILURE_ENDS.get(type(failure), End.STORE_ERROR)
            return
        if idle_until is not None and clock() >= idle_until:
            yield End.IDLE
            return
        wake = min(timing.deadline, next_heartbeat, idle_until or timing.deadline)
        if outlet is not None and _caught_up(following[0]):
            if (written_at := await _follow(following[0], outlet, wake - clock())) is not None:
                next_heartbeat = written_at + timing.heartbeat_seconds
                if idle_until is not None:
                    idle_until = written_at + (timing.idle_seconds or 0)
        else:
            await _wait_any([f.feed for f in following], wake - clock())
        if clock() >= next_heartbeat:
            yield wire.encode_comment()
            next_heartbeat = clock() + timing.heartbeat_seconds
    yield End.DEADLINE


def _caught_up(opened: Opened) -> bool:
    """Whether the session has delivered all it has read, up to its feed's position:
    the feed's next events are what its reader would deliver next, as they are."""
    reader, feed = opened.reader, opened.feed
    cursor = reader.cursor
    return cursor.seq == reader.scanned_to and feed.position == cursor


async def _follow(opened: Opened, outlet: Outlet, at_most: float) -> float | None:
    """Have the channel's feed write its new frames to the stream for up to
    ``at_most`` seconds, or until it cannot; returns when it last wrote (on
    time.monotonic), None when it wrote nothing."""
    reader, feed = opened.reader, opened.feed
    attached = Attached(outlet, reader.cursor.epoch, reader.scanned_to)
    feed.attach(attached, at_most)
    try:
        await attached.woken
    except BaseException:
        outlet.drop_pending()  # cancelled: the client left
        raise
    finally:
        feed.detach(attached)
    if attached.written_at is not None:
        reader.cursor = Position(attached.epoch, attached.seq)
        # As for the feed's events read from its buffer (see tail).
        reader.scanned_to, reader.aligned = attached.seq, False
    await outlet.finish_pending()
    return attached.written_at


_FAILURE_ENDS = {LogRestarted: End.RESTART, ShuttingDown: End.SHUTDOWN}


async def _wait_any(feeds: list[ChannelFeed], at_most: float) -> None:
    if len(feeds) == 1:
        await feeds[0].wait(at_most)
        return
    waits = [asyncio.ensure_future(feed.wait(at_most)) for feed in feeds]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
