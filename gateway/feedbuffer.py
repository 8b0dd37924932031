"""A channel feed's buffer of recent events, shared by all of its sessions.

The buffer holds *every* unexpired event after ``complete_after``, in seq
order, and never more than its byte bound: a session whose position is at or
after ``complete_after`` catches up from it without a store call, one whose
position is older reads the log (``after`` answers None), so no subscriber can
make the process buffer without bound. Each buffered event's frame is encoded
once for every session that sends it.
"""

from __future__ import annotations

import bisect

from gateway import wire
from gateway.items import StoredEvent


class FeedBuffer:
    __slots__ = ("_bytes", "_events", "_frames", "_max_bytes", "_max_events", "complete_after")

    def __init__(self, complete_after: int, *, max_events: int, max_bytes: int) -> None:
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._events: list[StoredEvent] = []
        self._frames: dict[int, tuple[StoredEvent, bytes]] = {}
        self._bytes = 0
        self.complete_after = complete_after  # every unexpired event after it is here

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def after(self, seq: int) -> list[StoredEvent] | None:
        """Buffered events after ``seq``; None when ``seq`` is older than the buffer."""
        if seq < self.complete_after:
            return None
        return self._events[bisect.bisect_right(self._events, seq, key=lambda e: e.seq) :]

    def frame(self, event: StoredEvent) -> bytes:
        """``event``'s frame on the single-channel stream, encoded once while buffered."""
        cached = self._frames.get(event.seq)
        if cached is not None and cached[0] is event:
            return cached[1]
        frame = wire.encode_event(event.data, event=event.event, id=event.event_id)
        if self._events and self._events[0].seq <= event.seq:  # buffered: keep it
            self._frames[event.seq] = (event, frame)
        return frame

    def extend(self, events: list[StoredEvent]) -> None:
        """Buffer the events that follow the newest buffered one."""
        self._events.extend(events)
        self._bytes += sum(map(_footprint, events))
        # Trim with slack (to half the event bound, to 3/4 of the byte bound) so
        # the copy is amortised over many appends. The byte bound holds at all
        # times: memory is what kills a small Lambda.
        dropped = freed = 0
        if len(self._events) > 2 * self._max_events:
            dropped = len(self._events) - self._max_events
            freed = sum(map(_footprint, self._events[:dropped]))
        if self._bytes - freed > self._max_bytes:
            while dropped < len(self._events) and self._bytes - freed > self._max_bytes * 3 // 4:
                freed += _footprint(self._events[dropped])
                dropped += 1
        if dropped:
            self._bytes -= freed
            self.complete_after = self._events[dropped - 1].seq
            for event in self._events[:dropped]:
                self._frames.pop(event.seq, None)
            del self._events[:dropped]


def _footprint(event: StoredEvent) -> int:
    """What a buffered event holds in memory, roughly: its data and type, its
    encoded frame, and the objects around them."""
    return 2 * (len(event.data) + len(event.event or "")) + 300
