"""The response that carries an event stream: lean, because thousands are held.

Starlette's ``StreamingResponse`` (on servers speaking ASGI before 2.4, as
uvicorn's HTTP does) runs each response in an anyio task group with two tasks,
one streaming and one waiting for the disconnect. An idle SSE connection is
nothing but that waiting, so this response streams from the request's own task
and watches for the disconnect without a task of its own: it steps the
server's ``receive`` by hand (as ``gateway.fanout`` steps ``send``) and cancels
the stream when the client leaves, so the session's cleanup (leaving its
channel feeds) runs at once, not at the next heartbeat. Its headers are the
same for every stream and built once; a server's ``WRITE_CHUNK`` writer goes to
the outlet (``gateway.fanout``). Measured in BENCHMARKS.md (idle memory
per connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.types import Receive, Scope, Send

from gateway.fanout import WRITE_CHUNK, Outlet

_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)


class EventStreamResponse:
    """An ASGI response streaming ``body``'s chunks; given the outlet, its session
    may also have its channel's feed write to the stream (``gateway.fanout``)."""

    __slots__ = ("_make_body",)

    def __init__(self, body: Callable[[Outlet], AsyncIterator[bytes]]) -> None:
        self._make_body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.current_task()
        assert stream is not None
        watch = _DisconnectWatch(receive, stream.cancel)
        writer = (scope.get("extensions") or {}).get(WRITE_CHUNK)
        body = self._make_body(Outlet(send, writer["write"] if writer else None))
        try:
            # A list of its own: middleware (CORS) adds headers to it in place.
            await send({"type": "http.response.start", "status": 200, "headers": [*_HEADERS]})
            async for chunk in body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not watch.gone or stream.uncancel() > 0:
                raise  # cancelled by the server, not by the client leaving
        finally:
            watch.stop()
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()


class _DisconnectWatch:
    """Calls ``on_gone`` once ``receive`` says the client disconnected. Each
    ``receive`` is run by hand: stepped until it waits, and stepped on when what
    it waits on is done, with no task (a task per held connection is memory)."""

    __slots__ = ("_coroutine", "_on_gone", "_receive", "gone")

    def __init__(self, receive: Receive, on_gone: Callable[[], object]) -> None:
        self._receive = receive
        self._on_gone = on_gone
        self._coroutine: Any = receive()
        self.gone = False
        self._step()

    def _step(self, _: object = None) -> None:
        while self._coroutine is not None:
            try:
                waiting_on = self._coroutine.send(None)
            except StopIteration as done:
                if done.value["type"] == "http.disconnect":
                    self._coroutine, self.gone = None, True
                    self._on_gone()
                else:
                    self._coroutine = self._receive()
                continue
            except (Exception, asyncio.CancelledError):  # receive failed: nothing to watch
                self._coroutine = None
                return
            if waiting_on is None:  # a bare yield (sleep(0)): step again soon
                asyncio.get_running_loop().call_soon(self._step)
            else:
                waiting_on.add_done_callback(self._step)
            return

    def stop(self) -> None:
        coroutine, self._coroutine = self._coroutine, None
        if coroutine is not None:
            coroutine.close()
