"""One tail loop per channel per process, shared by all of its subscribers.

N connections on a channel cost one DynamoDB query per poll, not N. The feed
keeps a bounded buffer of recent events; a subscriber reads from it by seq and
falls back to the store when its cursor is older than the buffer (a fresh
resume, or a slow client that fell behind), so no subscriber can make the
process buffer without bound. Polling adapts: fast right after activity,
backing off to the maximum interval when idle; a publish through the same
process wakes the loop at once.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import AsyncIterator

from gateway.cursor import Position
from gateway.errors import GatewayError
from gateway.store import EventLog, StoredEvent

logger = logging.getLogger(__name__)


class ChannelFeed:
    def __init__(
        self,
        channel: str,
        store: EventLog,
        start: Position,
        *,
        poll_min_seconds: float,
        poll_max_seconds: float,
        buffer_events: int,
    ) -> None:
        self.channel = channel
        self.epoch = start.epoch
        self.subscribers = 0
        self.failure: GatewayError | None = None
        self._store = store
        self._poll_min = poll_min_seconds
        self._poll_max = poll_max_seconds
        self._buffer_events = buffer_events
        self._events: list[StoredEvent] = []
        self._complete_after = start.seq  # the buffer holds every unexpired event after this seq
        self._scanned_to = start.seq
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"sse-feed:{self.channel}")

    def stop(self, reason: GatewayError | None = None) -> None:
        """Stop polling; with a ``reason``, the feed's sessions end (with ``retry:``) too."""
        if reason is not None and self.failure is None:
            self.failure = reason
            self._publish()
        if self._task is not None:
            self._task.cancel()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def after(self, seq: int) -> list[StoredEvent] | None:
        """Buffered events after ``seq``; None when ``seq`` is older than the buffer."""
        if seq < self._complete_after:
            return None
        return self._events[bisect.bisect_right(self._events, seq, key=lambda e: e.seq) :]

    def wake(self) -> None:
        self._wake.set()

    async def wait(self, at_most: float) -> None:
        """Until new events are buffered, the feed fails, or ``at_most`` seconds pass."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), at_most)

    def _publish(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _run(self) -> None:
        interval = self._poll_min
        while True:
            try:
                page = await self._store.read_after(self.channel, self._scanned_to)
            except Exception as exc:
                # Whatever stopped the tail, its sessions must end (with retry:), not hang.
                logger.warning("tail of channel %r failed: %s", self.channel, exc)
                self.failure = exc if isinstance(exc, GatewayError) else GatewayError(str(exc))
                self._publish()
                return
            if self.epoch is None and page.events:
                self.epoch = page.events[0].epoch
            if any(event.epoch != self.epoch for event in page.events):
                # The log started over under us: sessions end and their reconnect resets.
                self.failure = GatewayError(f"channel {self.channel!r} restarted its log")
                self._publish()
                return
            self._scanned_to = page.scanned_to
            if page.events:
                self._buffer(page.events)
                self._publish()
                interval = self._poll_min
            else:
                interval = min(interval * 2, self._poll_max)
            if page.more:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()

    def _buffer(self, events: list[StoredEvent]) -> None:
        self._events.extend(events)
        # Trim in halves so the copy is amortised over many appends.
        if len(self._events) > 2 * self._buffer_events:
            dropped = len(self._events) - self._buffer_events
            self._complete_after = self._events[dropped - 1].seq
            del self._events[:dropped]


class ChannelHub:
    def __init__(
        self,
        store: EventLog,
        *,
        poll_min_seconds: float,
        poll_max_seconds: float,
        buffer_events: int,
    ) -> None:
        self._store = store
        self._poll_min = poll_min_seconds
        self._poll_max = poll_max_seconds
        self._buffer_events = buffer_events
        self._feeds: dict[str, ChannelFeed] = {}

    @property
    def feeds(self) -> dict[str, ChannelFeed]:
        """The running feeds by channel (a copy)."""
        return dict(self._feeds)

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str, head: Position) -> AsyncIterator[ChannelFeed]:
        feed = self._feeds.get(channel)
        if feed is None or feed.failure is not None:
            feed = ChannelFeed(
                channel,
                self._store,
                head,
                poll_min_seconds=self._poll_min,
                poll_max_seconds=self._poll_max,
                buffer_events=self._buffer_events,
            )
            self._feeds[channel] = feed
            feed.start()
        feed.subscribers += 1
        try:
            yield feed
        finally:
            feed.subscribers -= 1
            if feed.subscribers == 0:
                feed.stop()
                if self._feeds.get(channel) is feed:
                    del self._feeds[channel]

    def notify(self, channel: str) -> None:
        """Something was appended to ``channel``: poll it now rather than at the next tick."""
        feed = self._feeds.get(channel)
        if feed is not None:
            feed.wake()

    def close(self) -> None:
        """End every open session cleanly, so their browsers reconnect (elsewhere)."""
        for feed in self._feeds.values():
            feed.stop(GatewayError("the server is shutting down"))
        self._feeds.clear()
