"""Which channels this process follows: one feed per channel (``gateway/feed.py``),
shared by all of its sessions, and at most one head query per channel at a time.

A connect storm on a cold channel (a deploy, a reload wave, reconnects after
``retry:``) must cost one store query, not one per connection: the sessions
that arrive while a channel's head query is out wait for its answer
(``head``). A session that leaves while waiting (its client went, its deadline
passed) stops waiting and the query goes on for the others; when the last
waiter leaves, the query is cancelled. A query that fails fails every waiter
alike, with the same error (each session ends with ``retry:``).

An answer read before a session arrived is as good as one read after for most
starts (a fresh session, or a position the answer already holds: whatever was
appended since is read after it), but not for a client that holds a newer
position than the answer: those sessions ask again (``gateway/opening.py``).
Nor is it news to a feed that moved on while the query was out (it took the
channel's first events, say): such an answer never restarts the feed
(``moved_on``); its sessions start from the feed's position instead.

A query the store does not answer holds its waiters for one attempt's timeout
at most (``SSE_GATEWAY_DYNAMODB_TIMEOUT_SECONDS``): botocore then gives the
attempt up and sends it again (or, with no attempts left, fails it for all),
and the waiters take that answer. Without the shared query the session that
sent it would wait as long; the others share its wait instead of each asking.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from gateway.cursor import Position
from gateway.errors import FeedLimitReached, LogRestarted, ShuttingDown
from gateway.fanout import Alarms
from gateway.feed import ChannelFeed
from gateway.items import Batch, LogEnd, StoredEvent
from gateway.metrics import Metrics
from gateway.store import EventLog

if TYPE_CHECKING:
    from gateway.notify import Notifier

logger = logging.getLogger(__name__)


class _Flight:
    """A channel's head query, when it went out, and how many sessions wait for its
    answer."""

    __slots__ = ("asked_at", "query", "waiting")

    def __init__(self, query: asyncio.Task[Batch | None]) -> None:
        self.query = query
        self.asked_at = time.monotonic()
        self.waiting = 0


class ChannelHub:
    def __init__(
        self,
        store: EventLog,
        *,
        poll_min_seconds: float,
        poll_max_seconds: float,
        buffer_events: int,
        buffer_bytes: int = 8 << 20,
        max_feeds: int = 10_000,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
        notified_poll_seconds: float = 30.0,
    ) -> None:
        self._store = store
        self._notifier = notifier
        self._notified_poll = notified_poll_seconds
        self._metrics = metrics if metrics is not None else Metrics()
        self._poll_min = poll_min_seconds
        self._poll_max = poll_max_seconds
        self._buffer_events = buffer_events
        self._buffer_bytes = buffer_bytes
        self._max_feeds = max_feeds
        self._feeds: dict[str, ChannelFeed] = {}
        self._flights: dict[str, _Flight] = {}  # head queries out, by channel
        self._alarms = Alarms()  # shared by the feeds' attached sessions

    @property
    def feeds(self) -> dict[str, ChannelFeed]:
        """The running feeds by channel (a copy)."""
        return dict(self._feeds)

    def joinable(self, channel: str) -> ChannelFeed | None:
        """The channel's feed, if one runs, has not failed, and has seen the log's
        head lately (so a purge cannot have gone unseen for longer than a poll)."""
        feed = self._feeds.get(channel)
        # A purge shows within a few polls; a connection storm must not lose the feed.
        if (
            feed is None
            or feed.failure is not None
            or not feed.head_seen_within(max(10 * self._poll_max, 2 * feed.head_interval))
        ):
            return None
        return feed

    @property
    def head_queries(self) -> int:
        """How many head queries are out (one per channel at most)."""
        return len(self._flights)

    async def head(self, channel: str) -> tuple[Batch | None, float]:
        """The channel's newest item (``EventLog.last_batch``), from the head query
        that is out for the channel if there is one, else from a new one; and when
        that query went out (on time.monotonic)."""
        flight = self._flights.get(channel)
        if flight is None:
            query = asyncio.create_task(self._store.last_batch(channel), name=f"sse-head:{channel}")
            flight = self._flights[channel] = _Flight(query)
            query.add_done_callback(lambda _: self._land(channel, flight))
        flight.waiting += 1
        try:
            # Shielded: a waiter that leaves must not cancel the others' answer.
            return await asyncio.shield(flight.query), flight.asked_at
        finally:
            flight.waiting -= 1
            if not flight.waiting and not flight.query.done():
                flight.query.cancel()  # nobody is left to answer
                self._land(channel, flight)

    def moved_on(self, channel: str, head: Position, asked_at: float) -> ChannelFeed | None:
        """The channel's running feed if it knows more than a head query that went out
        at ``asked_at`` and found ``head``: it stands elsewhere, and got there after
        the query went out (it took the channel's first events, say), so the answer
        may predate its position and cannot prove that the log started over."""
        feed = self._feeds.get(channel)
        if feed is None or feed.failure is not None or feed.position == head:
            return None
        return feed if feed.moved_after(asked_at) else None

    def _land(self, channel: str, flight: _Flight) -> None:
        # Sessions that come later ask again: an answer is only as new as its query.
        if self._flights.get(channel) is flight:
            del self._flights[channel]

    def admit(self, channels: Collection[str]) -> None:
        """Raises ``FeedLimitReached`` unless a session on ``channels`` may start the
        feeds it lacks: checked before it pays a store call. Channels the process
        follows take no new feed, so they always have room."""
        new = sum(1 for channel in set(channels) if channel not in self._feeds)
        if new and len(self._feeds) + new > self._max_feeds:
            raise FeedLimitReached(
                f"this process follows {len(self._feeds)} channels already; {new} more would "
                "pass SSE_GATEWAY_MAX_FEEDS"
            )

    def subscribe(self, channel: str, head: LogEnd | ChannelFeed | None) -> ChannelFeed:
        """The channel's feed for a session that found ``head`` as the log's newest item
        (or that joins the running feed it found); the session must ``leave`` it.
        (Not a context manager: thousands of idle sessions each hold one.)"""
        feed = self._feeds.get(channel)
        if isinstance(head, ChannelFeed):
            assert feed is head, "join a running feed without awaiting in between"
        elif feed is None or feed.failure is not None or not feed.serves(head):
            if feed is not None:
                feed.stop(LogRestarted(f"channel {channel!r} started its log over"))
                del self._feeds[channel]
            if len(self._feeds) >= self._max_feeds:
                logger.warning(
                    "session on channel %r ends: %d channel feeds run, the most this process "
                    "runs (SSE_GATEWAY_MAX_FEEDS)",
                    channel,
                    len(self._feeds),
                )
                raise FeedLimitReached(f"this process follows {len(self._feeds)} channels already")
            feed = ChannelFeed(
                channel,
                self._store,
                head,
                poll_min_seconds=self._poll_min,
                poll_max_seconds=self._poll_max,
                buffer_events=self._buffer_events,
                buffer_bytes=self._buffer_bytes,
                metrics=self._metrics,
                alarms=self._alarms,
                notifier=self._notifier,
                notified_poll_seconds=self._notified_poll,
            )
            self._feeds[channel] = feed
            feed.start()
        feed.subscribers += 1
        return feed

    def leave(self, feed: ChannelFeed) -> None:
        feed.subscribers -= 1
        if feed.subscribers == 0:
            feed.stop()
            if self._feeds.get(feed.channel) is feed:
                del self._feeds[feed.channel]

    def appended(self, channel: str, events: Sequence[StoredEvent]) -> None:
        """This process appended ``events`` to ``channel``: hand them to its feed, or
        have it poll now rather than at the next tick."""
        feed = self._feeds.get(channel)
        if feed is not None and not feed.hand_over(events):
            feed.wake()

    def close(self) -> None:
        """End every open session cleanly, so their browsers reconnect (elsewhere)."""
        for feed in self._feeds.values():
            feed.stop(ShuttingDown("the server is shutting down"))
        self._feeds.clear()
