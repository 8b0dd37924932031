"""What one client connection may hold on ``sse-gateway serve``: bounded heads, no stalls.

The invariant: a connection that is not in a request (it has just connected, or
it is between keep-alive requests and has started the next one) must send the
whole request head, at most ``SSE_GATEWAY_MAX_HEADER_BYTES``, within
``SSE_GATEWAY_HEADER_TIMEOUT_SECONDS``; else it gets ``431`` (or ``408``, or
nothing if it sent nothing) and is closed. Beyond ``SSE_GATEWAY_MAX_CONNECTIONS``
open connections, a new one is closed at once: EventSource retries after a
network error, whereas uvicorn's ``limit_concurrency`` answers ``503``, which
stops an EventSource for good. A connection in a request has no timeout here:
an idle SSE stream is a request in progress, and a publish body has its own
deadline in the app (``SSE_GATEWAY_BODY_TIMEOUT_SECONDS``); only what a GET
sends after its head (a pipelined request) is bounded like a head. The rest of a
body answered before it ended (a ``413`` on its declared length) is no head: the
parser drops it and the connection serves on, if it ends within the header
timeout. (Closing at once would reset a connection its client is still sending
on, and a reset can drop the answer before the client reads it.)

uvicorn bounds neither a request head under httptools (it accepted 32 MB) nor
the wait for a first request (its keep-alive timeout starts only after a
response), so these protocols add both on top of uvicorn's own, for either
parser: they watch what arrives while no request is in progress.

Under httptools the protocol also offers each request the ``WRITE_CHUNK``
extension (``gateway.fanout``): a channel's feed writes one frame to a thousand
streams, and the chunk it frames once goes to each connection as uvicorn's
``send`` would write it, without a coroutine and the send's checks per stream.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from gateway.fanout import WRITE_CHUNK
from gateway.settings import Settings

_ANSWERS = {
    408: b"408 Request Timeout",
    431: b"431 Request Header Fields Too Large",
}


class _Bounds:
    """Mixed into a uvicorn HTTP protocol; the class attributes come from ``protocol_for``."""

    max_header_bytes = 32_768
    header_timeout = 10.0
    max_connections = 10_000

    # What the uvicorn protocol it is mixed into provides.
    cycle: Any
    connections: set[Any]
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop

    _head_bytes = 0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        if len(self.connections) > self.max_connections:
            self.transport.abort()
            return
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        if not self._in_request():
            if self._head_timer is None:  # the next request of a kept-alive connection
                self._await_head()
            if not self._answered_body_arriving():
                self._head_bytes += len(data)
        elif cycle.scope["method"] == "GET":
            # A GET here has no body: what arrives during one (an open stream) is a
            # pipelined request, whose head httptools would gather without bound.
            self._head_bytes += len(data)
        super().data_received(data)  # type: ignore[misc]
        if self._in_request() and self.cycle is not cycle:  # a head came whole
            self._stop_head_timer()
            self._head_bytes = 0
        if self._head_bytes > self.max_header_bytes and not self.transport.is_closing():
            if self._in_request():
                self.transport.close()  # mid-response: there is no answering it
            else:
                self._refuse(431)

    def _in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _answered_body_arriving(self) -> bool:
        """The rest of a request's body still arrives after its answer (a 413 sent on
        its declared length): read and dropped by the parser, no head."""
        raise NotImplementedError

    def _await_head(self) -> None:
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_request() or self.transport.is_closing():
            return
        if self._head_bytes:
            self._refuse(408)
        else:
            self.transport.close()  # silent, or still sending an answered body

    def _refuse(self, status: int) -> None:
        self._stop_head_timer()
        reason = _ANSWERS[status]
        self.transport.write(
            b"HTTP/1.1 " + reason + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(reason) + reason
        )
        self.transport.close()


class _ChunkWriter:
    """``WRITE_CHUNK`` for one request of uvicorn's httptools protocol (``write``).

    It holds its request cycle weakly: the cycle's scope holds the writer, and a
    strong reference back would make every finished request (its transport, flow
    control, events and buffers with it) garbage that only a full collection frees,
    a pause that grew with the sessions that had left (BENCHMARKS.md section 16)."""

    __slots__ = ("_cycle", "_flow", "_transport")

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self._cycle = weakref.ref(cycle)
        self._flow = cycle.flow
        self._transport = cycle.transport

    def write(self, chunk: bytes) -> bool:
        cycle = self._cycle()
        if cycle is None:
            return False
        # When uvicorn's send would write a body chunk as is, at once: its response
        # started chunked (not HEAD), is not complete, the client is there and the
        # transport takes data (else the send waits for it to drain). uvicorn marks
        # only a connection's newest request disconnected, so a stream with one
        # pipelined behind it also asks the transport: uvloop's raises on a write
        # once closed, and the send path meets that error in the stream's own task,
        # not in the feed's write to every stream (and the publish that handed over).
        if cycle.chunked_encoding and not (
            cycle.response_complete
            or cycle.disconnected
            or self._flow.write_paused
            or self._transport.is_closing()
        ):
            self._transport.write(chunk)
            return True
        return False


class BoundedHttpTools(_Bounds, HttpToolsProtocol):
    _message_complete = True

    def _answered_body_arriving(self) -> bool:
        return not self._message_complete

    def on_message_complete(self) -> None:
        self._message_complete = True
        super().on_message_complete()

    def on_headers_complete(self) -> None:
        self._message_complete = False
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before:  # a request for the app (not an upgrade)
            extensions = self.scope.setdefault("extensions", {})
            extensions[WRITE_CHUNK] = {"write": _ChunkWriter(self.cycle).write}


class BoundedH11(_Bounds, H11Protocol):
    def _answered_body_arriving(self) -> bool:
        return self.conn.their_state is h11.SEND_BODY


def protocol_for(http: str, settings: Settings) -> type[asyncio.Protocol]:
    """The uvicorn HTTP protocol class for parser ``http`` with the settings' bounds."""
    base = BoundedHttpTools if http == "httptools" else BoundedH11
    bounds = {
        "max_header_bytes": settings.max_header_bytes,
        "header_timeout": settings.header_timeout_seconds,
        "max_connections": settings.max_connections,
    }
    return type(base.__name__, (base,), bounds)
