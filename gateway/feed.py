"""One tail loop per channel per process, shared by all of its subscribers.

N connections on a channel cost one DynamoDB query per poll, not N. The feed
keeps a bounded buffer of recent events; a subscriber reads from it by seq and
falls back to the store when its cursor is older than the buffer (a fresh
resume, or a slow client that fell behind), so no subscriber can make the
process buffer without bound. Polling adapts: fast right after activity,
backing off to the maximum interval when idle; a publish through the same
process wakes the loop at once.

A feed follows its log forward only. A new epoch that begins after its
position is buffered like any event (sessions see the switch in-band). When
the log starts over below its position (a purge; or TTL deleted the newest
items of an idle channel, so the next append opened an epoch below the feed),
the feed ends its sessions with ``retry:`` and the reconnects resolve their
position against the new head. The second case cannot show in ``seq >
scanned_to`` polls, so once the feed's newest item has expired it polls the
head instead, which costs the same for an item of up to 4 KB.

With a notifier (``gateway/notify.py``) the feed's one seam to other processes
is ``notice``: what another process's notification carries goes through the
same check as an in-process hand-over, and anything else wakes a read. While
its subscription stands (``set_notified``), the idle poll is the safety poll
(``NOTIFIED_POLL_SECONDS``), each one a head check, so purges and TTL still
show within it; either switch reads the log once at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.cursor import EMPTY, Position
from gateway.errors import GatewayError, LogRestarted
from gateway.fanout import Alarms, Attached, Attachments
from gateway.feedbuffer import FeedBuffer
from gateway.items import LogEnd, StoredEvent
from gateway.metrics import Metrics
from gateway.store import EventLog, Page

if TYPE_CHECKING:
    from gateway.notify import Notifier

logger = logging.getLogger(__name__)


class ChannelFeed:
    def __init__(
        self,
        channel: str,
        store: EventLog,
        start: LogEnd | None,
        *,
        poll_min_seconds: float,
        poll_max_seconds: float,
        buffer_events: int,
        buffer_bytes: int,
        metrics: Metrics,
        alarms: Alarms,
        notifier: Notifier | None = None,
        notified_poll_seconds: float = 30.0,
    ) -> None:
        self.channel = channel
        self.epoch = start.epoch if start else None
        self._since = start.since if start else 1  # where the feed's epoch began
        self.subscribers = 0
        self.failure: GatewayError | None = None
        self._store = store
        self._poll_min = poll_min_seconds
        self._poll_max = poll_max_seconds
        self._metrics = metrics
        self._notifier = notifier
        self._notified_poll = notified_poll_seconds
        self._notified = False  # the notifier's subscription to this channel stands
        self._attached = Attachments(alarms)  # sessions it writes to
        self._scanned_to = start.last if start else 0
        self._buffer = FeedBuffer(
            self._scanned_to, max_events=buffer_events, max_bytes=buffer_bytes
        )
        self._end = start  # the newest item the feed has looked at
        self._moved_at = time.monotonic()  # when it reached its position
        # New epochs this feed saw begin right after a position it had reached, and
        # whether the item at its position was live when reached (so nothing after
        # it had been deleted then, and polls have seen everything since).
        self._observed_after: dict[str, Position] = {}
        self._position_proven = start is not None and not store.has_expired(start.expires_at)
        self._aligned = True  # _scanned_to ends an item
        self._head_checked_at = time.monotonic() if start is not None else -math.inf
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        # A context of its own: the feed outlives the request that started it, so it
        # must not log under that request's id (handlers/logs.py).
        self._task = asyncio.create_task(
            self._run(), name=f"sse-feed:{self.channel}", context=contextvars.Context()
        )
        if self._notifier is not None:
            self._notifier.follow(self)

    def stop(self, reason: GatewayError | None = None) -> None:
        """Stop polling; with a ``reason``, the feed's sessions end (with ``retry:``) too."""
        if reason is not None:
            self._fail(reason)
        if self._task is not None:
            self._task.cancel()
        if self._notifier is not None:
            self._notifier.unfollow(self)

    def _fail(self, reason: GatewayError) -> None:
        if self.failure is None:
            self.failure = reason
            self._publish()
            self._attached.wake_all()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def serves(self, head: LogEnd | None, position: int | None = None) -> bool:
        """Whether a session that found ``head`` can follow this feed: its log has not
        started over below the feed's position (or below ``position``, where the
        feed was when it asked for ``head``: events handed over while the query was
        out lie beyond what it could see). A head behind it in the feed's epoch
        counts as a restart too once the newest item the feed knows may have
        expired: TTL may have deleted the newest items, whose events the buffer must
        not hand out again. Before that (TTL deletes only expired items, and expiry
        never decreases with seq), such a head was read before a hand-over.

        A head of another epoch that ends below where the feed's epoch began, and
        has expired, is the item that epoch opened above (or one before it), read
        before it began: nothing restarted either."""
        at = self._scanned_to if position is None else position
        if head is None:
            return at == 0
        if head.epoch == self.epoch:
            newest = self._end
            return head.last >= at or (
                newest is not None and not self._store.has_expired(newest.expires_at)
            )
        if head.last < self._since and self._store.has_expired(head.expires_at):
            return True
        return head.since > at

    def moved_after(self, moment: float) -> bool:
        """Whether the feed reached its position after ``moment`` (on time.monotonic)."""
        return self._moved_at > moment

    @property
    def retains_nothing(self) -> bool:
        """Whether the item holding the feed's position is known to have expired, and
        with it every event up to the position (expiry never decreases along the log)."""
        end = self._end
        return (
            end is not None
            and (end.epoch, end.last) == (self.epoch, self._scanned_to)
            and self._store.has_expired(end.expires_at)
        )

    @property
    def buffered_bytes(self) -> int:
        return self._buffer.held_bytes

    def head_seen_within(self, seconds: float) -> bool:
        return time.monotonic() - self._head_checked_at <= seconds

    @property
    def head_interval(self) -> float:
        """The longest the feed goes between looks at the log's head while idle."""
        return self._notified_poll if self._notified else self._poll_max

    @property
    def since(self) -> int:
        """Where the feed's epoch began (1 before the log's first event)."""
        return self._since

    @property
    def position(self) -> Position:
        """The newest position the feed has seen: every event up to it is read."""
        return Position(self.epoch, self._scanned_to) if self.epoch is not None else EMPTY

    def frame(self, event: StoredEvent) -> bytes:
        """``event``'s frame on the single-channel stream, encoded once per process for
        all of the feed's sessions while the event is buffered."""
        return self._buffer.frame(event)

    def after(self, seq: int) -> list[StoredEvent] | None:
        """Buffered events after ``seq``; None when ``seq`` is older than the buffer."""
        return self._buffer.after(seq)

    def observed_after(self, epoch: str) -> Position | None:
        """Where the feed had got to when it saw ``epoch`` begin right after it; no
        event can have come and gone unseen in between (see ``cursor.step``)."""
        return self._observed_after.get(epoch)

    def wake(self) -> None:
        self._wake.set()

    def set_notified(self, notified: bool) -> None:
        """Whether the notifier's subscription to this channel stands: notifications
        then bring appends, and the idle poll becomes the safety poll. Either switch
        reads the log at once: what was appended before the subscription stood (or
        after it fell) is found there, and the seq checks drop what a read and a
        notification both bring."""
        if notified != self._notified:
            self._notified = notified
            self.wake()

    def notice(self, events: Sequence[StoredEvent]) -> None:
        """Another process appended ``events`` (as its notification carried them, maybe
        only the newest, maybe none): taken when they are the feed's next events in
        its epoch; otherwise (a gap, a new epoch, a duplicate, out of order) the feed
        reads the log now, and looks at its head when the epoch differs (a purge)."""
        if self.failure is not None or self.hand_over(events, source="notification"):
            return
        self._metrics.notification("fell_back")
        if events and events[0].epoch != self.epoch:
            self._head_checked_at = -math.inf
        self.wake()

    def attach(self, attached: Attached, at_most: float) -> None:
        """Write new events straight to ``attached``'s stream while they follow its
        position; detach and wake it when they do not, when the feed fails, or in
        ``at_most`` seconds (its next heartbeat). The session must ``detach``."""
        if self.failure is not None:
            attached.wake()
        else:
            self._attached.add(attached, at_most)

    def detach(self, attached: Attached) -> None:
        self._attached.remove(attached)

    async def wait(self, at_most: float) -> None:
        """Until new events are buffered, the feed fails, or ``at_most`` seconds pass."""
        # asyncio.timeout rather than wait_for: no task per waiting session.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(at_most):
                await self._changed.wait()

    def _publish(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _run(self) -> None:
        interval = self._poll_min
        while True:
            try:
                page = await self._poll()
            except Exception as exc:
                # Whatever stopped the tail, its sessions must end (with retry:), not hang.
                logger.warning("tail of channel %r stops: %s", self.channel, exc)
                self._fail(exc if isinstance(exc, GatewayError) else GatewayError(str(exc)))
                return
            if page.end is not None:
                self._end = page.end
            # An in-process append may have been handed over while the poll was out.
            fresh = [event for event in page.events if event.seq > self._scanned_to]
            if page.scanned_to >= self._scanned_to:
                if page.scanned_to > self._scanned_to:
                    self._moved_at = time.monotonic()
                self._scanned_to, self._aligned = page.scanned_to, True
            if fresh:
                self._deliver(fresh, "poll")
                interval = self._poll_min
            else:
                interval = min(interval * 2, self._poll_max)
            if page.more:
                continue
            notified = self._notified
            try:
                await asyncio.wait_for(
                    self._wake.wait(), self._notified_poll if notified else interval
                )
            except TimeoutError:
                if notified:
                    self._metrics.safety_poll()
            self._wake.clear()

    async def _poll(self) -> Page:
        """The log after the feed's position; raises ``LogRestarted`` when it started
        over below it."""
        prior = self._scanned_to
        expired = self._end is not None and self._store.has_expired(self._end.expires_at)
        checked_at = time.monotonic()
        if expired or checked_at - self._head_checked_at >= self._poll_max:
            # Look at the head, not only past the position: TTL may delete the newest
            # item once it has expired, and a purged log may have started over below;
            # this also lets fresh sessions join without a query of their own.
            head = await self._store.last_batch(self.channel)
            end = head.end if head is not None else None
            if not self.serves(end, prior):
                raise LogRestarted(f"channel {self.channel!r} started its log over")
            self._head_checked_at = checked_at
            if end is None or end.last == self._scanned_to:
                return Page([], self._scanned_to, False, end)
            if head is not None and head.end.epoch == self.epoch and head.first <= prior + 1:
                # The newest item holds everything after the position: no read needed.
                return Page(self._store.live_events(head, prior), end.last, False, end)
        proven = self._position_proven
        page = await self._store.read_after(self.channel, prior, aligned=self._aligned)
        for event in page.events:  # live events only: each proves its item existed
            if event.epoch != self.epoch:
                if self.epoch is not None and event.since <= prior:
                    raise LogRestarted(f"channel {self.channel!r} started its log over")
                if self.epoch is not None and proven and event.since == prior + 1:
                    self._observed_after[event.epoch] = Position(self.epoch, prior)
                self.epoch, self._since = event.epoch, event.since
            prior, proven = event.seq, True
        if page.scanned_to >= self._scanned_to:
            self._position_proven = proven and prior == page.scanned_to
        return page

    def hand_over(self, events: Sequence[StoredEvent], source: str = "in_process") -> bool:
        """Buffer events this process just appended, if they follow the feed's
        position in its epoch (nothing can lie between): delivered at once, without
        waiting for a poll. Otherwise (another process wrote in between, a new
        epoch) the next poll reads them; returns whether they were taken."""
        if not events or self.failure is not None:
            return False
        first = events[0]
        starts_log = self.epoch is None and first.since == 1  # the log's first events
        if (first.epoch != self.epoch and not starts_log) or first.seq != self._scanned_to + 1:
            return False
        self.epoch = first.epoch
        # Appends may share an item (group commit): the position may now lie inside
        # one, so the next poll also looks for the rest of the item.
        self._scanned_to, self._aligned = events[-1].seq, False
        self._moved_at = time.monotonic()
        self._position_proven = True
        self._deliver(list(events), source)
        return True

    def _deliver(self, events: list[StoredEvent], source: str) -> None:
        """Buffer new events, write them to the attached sessions they follow
        (detaching the others), and wake the sessions that read the buffer."""
        self._metrics.fed(source, len(events))
        self._buffer.extend(events)
        if self._attached:
            written = self._attached.write(events, self.frame)
            self._metrics.delivered([e.appended_at for e in events], sessions=written)
        self._publish()
