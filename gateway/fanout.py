"""Frames written by a channel's feed straight into its sessions' responses.

With 1,000 sessions on a channel, waking 1,000 session tasks so that each
copies the same bytes into its socket costs most of a core (BENCHMARKS.md §1):
a task step, a wait, the session's generators and the response's loop, per
frame per session. A single-channel session that has caught up with its feed
*attaches* to it instead, and the feed writes each new frame into every
attached response itself, in one loop and without a task switch.

Writing without a task switch means running the coroutine of the server's ASGI
``send`` by hand. A send that can write at once (uvicorn's, while the socket
takes data) is done after its first step. One that has to wait (flow control:
the client reads slower than events come) cannot be finished by the feed: the
rest of it is left for the session's own task (``Outlet.pending``), and the
session is detached. Detached, it reads the feed's buffer by seq as before,
falls back to the store if it fell behind the buffer, and attaches again once
it has caught up. Nothing in the standard library or Starlette does this on
Python 3.11; 3.12's eager tasks come close but still make a task per write.

Even run by hand, a send per session per frame is a coroutine, the server's
checks and its chunk framing, each time for the same bytes (BENCHMARKS.md
section 13). A server may offer the ``WRITE_CHUNK`` extension instead
(``gateway.serving`` does, under httptools): the feed frames the chunk once and
each attached stream's connection takes it as is, when the server's ``send``
would have written those same bytes at once; otherwise the send runs as above.

A stream has one writer at a time: the feed while the session is attached, the
session's task otherwise. A write that has to wait detaches the session first,
and the session finishes that write before it writes anything else.

An attached session waits for its next heartbeat (or its deadline) on an
``Alarms`` slot shared with every session due in the same 50 ms, not on a timer
of its own: a uvloop timer costs ~600 bytes, and an idle connection waits on one
all its life (BENCHMARKS.md, idle memory).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from starlette.types import Message, Send

from gateway.items import StoredEvent

WRITE_CHUNK = "sse_gateway.write_chunk"
"""An ASGI scope extension: ``{"write": write}``, where ``write(chunk)`` writes a
response body's next chunk, framed as HTTP/1.1 chunked transfer coding frames it,
straight to the connection and returns True, if the server's ``send`` would write
the same bytes now without waiting; else it writes nothing and returns False.
Its writes go around every wrapper of ``send``: it suits an app whose middleware
leaves a stream's body as it is (the gateway's CORS adds headers only), and a
middleware that changes bodies (gzip) must not wrap the stream while it is offered."""


def chunked(body: bytes) -> bytes:
    """``body`` as one chunk of a chunked HTTP/1.1 body."""
    return b"%x\r\n%s\r\n" % (len(body), body)


class Outlet:
    """A stream's ASGI ``send``, for writes that should not switch tasks, and the
    server's ``WRITE_CHUNK`` writer (``write_chunk``) when it has one."""

    __slots__ = ("_send", "pending", "write_chunk")

    def __init__(self, send: Send, write_chunk: Callable[[bytes], bool] | None = None) -> None:
        self._send = send
        self.write_chunk = write_chunk
        self.pending: _Rest | None = None

    def write(self, message: Message) -> bool:
        """Send ``message`` now if the server takes it without waiting. Otherwise
        the rest of the send is left in ``pending`` (the session's task must await
        it before it writes again) and this returns False. A send that fails
        leaves its error in ``pending`` too, for the session's task to meet."""
        coroutine: Any = self._send(message)  # a coroutine, stepped by hand
        try:
            waiting_on = coroutine.send(None)
        except StopIteration:
            return True
        except Exception as exc:
            self.pending = _Rest(None, exc)
            return False
        self.pending = _Rest(coroutine, waiting_on)
        return False

    async def finish_pending(self) -> None:
        """Finish a write the feed left waiting (see ``write``)."""
        pending, self.pending = self.pending, None
        if pending is not None:
            await pending

    def drop_pending(self) -> None:
        """The stream ends without finishing a waiting write (its client left)."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.close()


class _Rest:
    """What is left of a send whose first step waited on ``waiting_on`` (a future
    of the event loop), or of one that failed (``coroutine`` None, the error in
    ``waiting_on``): awaiting it goes on exactly where the first step stopped."""

    __slots__ = ("_coroutine", "_waiting_on")

    def __init__(self, coroutine: Coroutine[Any, Any, None] | None, waiting_on: Any) -> None:
        self._coroutine = coroutine
        self._waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, None]:
        coroutine, waiting_on = self._coroutine, self._waiting_on
        if coroutine is None:
            raise waiting_on
        # What ``yield from`` does, from the second step on: the awaiting task
        # waits on what the coroutine waits on, and gets back what it sends.
        while True:
            try:
                sent = yield waiting_on
            except BaseException as exc:  # a cancellation goes through to the send
                try:
                    waiting_on = coroutine.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    waiting_on = coroutine.send(sent)
                except StopIteration:
                    return

    def close(self) -> None:
        if self._coroutine is not None:
            self._coroutine.close()


class Attached:
    """A session attached to its channel's feed: where its stream has got to
    (``epoch``, ``seq``) and when the feed last wrote to it. The feed writes a
    batch only if it follows ``seq`` in ``epoch`` (what the session's reader
    would deliver without a reset); anything else detaches the session."""

    __slots__ = ("alarm", "epoch", "outlet", "seq", "woken", "write_chunk", "written_at")

    def __init__(self, outlet: Outlet, epoch: str | None, seq: int) -> None:
        self.outlet = outlet
        self.write_chunk = outlet.write_chunk  # one call less per frame
        self.epoch = epoch
        self.seq = seq
        self.written_at: float | None = None
        self.alarm = 0  # its slot in Alarms
        # Done when the feed detaches the session (or fails), or its waiter wakes it.
        self.woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake(self) -> None:
        if not self.woken.done():
            self.woken.set_result(None)


class Attachments:
    """The sessions attached to one feed, and the one loop that writes to them."""

    __slots__ = ("_alarms", "_sessions")

    def __init__(self, alarms: Alarms) -> None:
        self._alarms = alarms
        self._sessions: dict[Attached, None] = {}

    def __bool__(self) -> bool:
        return bool(self._sessions)

    def add(self, attached: Attached, at_most: float) -> None:
        self._sessions[attached] = None
        self._alarms.set(attached, at_most)

    def remove(self, attached: Attached) -> None:
        self._sessions.pop(attached, None)
        self._alarms.cancel(attached)

    def wake_all(self) -> None:
        """Detach every session, each to read the feed (or learn why it ended)."""
        for attached in self._sessions:
            attached.wake()
        self._sessions.clear()

    def write(self, events: list[StoredEvent], frame: Callable[[StoredEvent], bytes]) -> int:
        """Write ``events`` (``frame`` encodes each) to every session they follow as
        they are; detach and wake the others. Returns how many were written to."""
        first, last_seq = events[0], events[-1].seq
        epoch, after = first.epoch, first.seq - 1
        # What a session's reader delivers as is: one epoch, no seq skipped.
        plain = last_seq - after == len(events) and all(e.epoch == epoch for e in events)
        body = b"".join(map(frame, events))
        # Built once for every session: the message for a send, the chunk for a writer.
        message = {"type": "http.response.body", "body": body, "more_body": True}
        chunk = chunked(body)
        now = time.monotonic()
        written = 0
        for attached in list(self._sessions):
            if plain and attached.seq == after and attached.epoch == epoch:
                attached.seq, attached.written_at = last_seq, now
                written += 1
                write_chunk = attached.write_chunk
                try:
                    if write_chunk is not None and write_chunk(chunk):
                        continue
                except Exception:
                    # Never out of the feed (a publish's hand-over would fail after
                    # the append): the send below meets the failure, and leaves it
                    # for the session's own task.
                    pass
                if attached.outlet.write(message):
                    continue
            del self._sessions[attached]  # it reads the buffer (or the log) again
            attached.wake()
        return written


class Alarms:
    """Wakes attached sessions when their time comes, up to ``granularity`` seconds
    late: one event-loop timer per slot of that length, shared by the sessions due
    in it. (A session woken a little early by the loop's clock just waits again.)"""

    def __init__(self, granularity: float = 0.05) -> None:
        self._granularity = granularity
        self._slots: dict[int, dict[Attached, None]] = {}

    def set(self, attached: Attached, at_most: float) -> None:
        """Wake ``attached`` in ``at_most`` seconds, unless ``cancel`` comes first."""
        loop = asyncio.get_running_loop()
        slot = math.ceil((loop.time() + at_most) / self._granularity)
        due = self._slots.get(slot)
        if due is None:
            due = self._slots[slot] = {}
            loop.call_at(slot * self._granularity, self._ring, slot)
        due[attached] = None
        attached.alarm = slot

    def cancel(self, attached: Attached) -> None:
        due = self._slots.get(attached.alarm)
        if due is not None:
            due.pop(attached, None)

    @property
    def pending(self) -> int:
        return sum(map(len, self._slots.values()))

    def _ring(self, slot: int) -> None:
        for attached in self._slots.pop(slot, {}):
            attached.wake()
