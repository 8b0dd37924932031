"""The response that carries an event stream: lean, because thousands are held.

Starlette's ``StreamingResponse`` (on servers speaking ASGI before 2.4, as
uvicorn's HTTP does) runs each response in an anyio task group with two tasks,
one streaming and one waiting for the disconnect. An idle SSE connection is
nothing but that waiting, so this response streams from the request's own task
and waits for the disconnect in one small task that cancels the stream when the
client leaves: the session's cleanup (leaving its channel feeds) runs at once,
not at the next heartbeat, and an idle connection holds a third of the objects.
Measured in BENCHMARKS.md (idle memory per connection).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.fanout import Outlet


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(
        self, body: Callable[[Outlet], AsyncIterator[bytes]], headers: Mapping[str, str]
    ) -> None:
        """``body`` makes the stream's chunks; given the outlet, its session may also
        have its channel's feed write to the stream (``gateway.fanout``)."""
        self.status_code = 200
        self.background = None
        self.init_headers(headers)  # no body: no Content-Length
        self._make_body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.current_task()
        assert stream is not None
        gone = asyncio.get_running_loop().create_future()
        listener = asyncio.create_task(_until_disconnect(receive, gone))
        listener.add_done_callback(lambda _: gone.done() and stream.cancel())
        body = self._make_body(Outlet(send))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone.done() or stream.uncancel() > 0:
                raise  # cancelled by the server, not by the client leaving
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            await _close(body)


async def _until_disconnect(receive: Receive, gone: asyncio.Future[None]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set_result(None)


async def _close(body: AsyncIterator[bytes]) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()
