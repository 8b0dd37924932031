"""Frames written by the feed straight into responses: the outlet's hand-run
sends on their own, then sessions over real HTTP, one of them too slow to take
its frames as they come, under ``sse-gateway serve``'s httptools protocol (whose
connections take the feed's chunks as they are, ``WRITE_CHUNK``) and under
uvicorn's own (the outlet's sends)."""

from __future__ import annotations

import asyncio
import json
import math
import socket
from collections.abc import Callable

import httpx
import pytest
from starlette.types import Message
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.fanout import Alarms, Attached, Outlet
from tests.eventstream import EventStreamParser, read_session
from tests.servers import GatewayServer, publish

StartGateway = Callable[..., GatewayServer]
BODY: Message = {"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True}
# The HTTP protocol a test's gateway serves with (None: sse-gateway serve's).
PROTOCOLS = pytest.mark.parametrize(
    "protocol", [None, HttpToolsProtocol], ids=["serve's protocol", "uvicorn's protocol"]
)


class Socket:
    """An ASGI ``send`` that writes at once while ``open``, else waits for it to open
    (as uvicorn's does under flow control); ``sent`` is what it wrote, in order."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.sent: list[bytes] = []
        self.unwound = 0

    async def send(self, message: Message) -> None:
        try:
            if not self.open.is_set():
                await self.open.wait()
            self.sent.append(message["body"])
        finally:
            self.unwound += 1


async def test_alarms_wake_each_session_in_its_slot_not_before_its_time() -> None:
    loop = asyncio.get_running_loop()
    granularity = 0.05
    alarms = Alarms(granularity)
    sessions = [Attached(Outlet(Socket().send), "e", 0) for _ in range(5)]
    # Due times mid-slot, so sessions meant to share a slot share it however late
    # each is set: a boundary between them would split them (as it should).
    first = (math.floor((loop.time() + 0.1) / granularity) + 0.5) * granularity
    due = [first, first, first, first + 4 * granularity, first + 4 * granularity]
    woken_at: dict[int, float] = {}
    # Sessions due in one slot are woken by its one timer, at once: when the first
    # of a slot's sessions learns it was woken, so has the other.
    together: dict[int, bool] = {}
    pairs = {0: 2, 2: 0, 3: 4, 4: 3}
    for n, session in enumerate(sessions):
        alarms.set(session, due[n] - loop.time())

        def woken(_: object, n: int = n) -> None:
            woken_at[n] = loop.time()
            together[n] = n not in pairs or sessions[pairs[n]].woken.done()

        session.woken.add_done_callback(woken)
    alarms.cancel(sessions[1])  # detached before its time
    assert alarms.pending == 4
    await asyncio.gather(*(s.woken for n, s in enumerate(sessions) if n != 1))
    await asyncio.sleep(0)
    assert sorted(woken_at) == [0, 2, 3, 4] and not sessions[1].woken.done()
    assert all(due[n] <= woken_at[n] for n in woken_at)
    assert all(together.values())
    assert woken_at[3] - woken_at[0] >= 3 * granularity  # the later slot rang on its own
    assert alarms.pending == 0


async def test_a_send_that_can_write_now_is_done_by_write_itself() -> None:
    sock = Socket()
    outlet = Outlet(sock.send)
    assert outlet.write(BODY)
    assert (sock.sent, outlet.pending) == ([BODY["body"]], None)


async def test_a_send_that_must_wait_is_finished_by_whoever_awaits_the_rest() -> None:
    sock = Socket()
    outlet = Outlet(sock.send)
    sock.open.clear()
    assert not outlet.write(BODY)
    assert sock.sent == [] and outlet.pending is not None
    finishing = asyncio.create_task(outlet.finish_pending())
    await asyncio.sleep(0.01)
    assert not finishing.done()  # still waiting on the socket, in the session's task
    sock.open.set()
    await finishing
    assert (sock.sent, outlet.pending) == ([BODY["body"]], None)
    await outlet.finish_pending()  # nothing left: a no-op
    assert sock.sent == [BODY["body"]]


async def test_a_cancelled_rest_cancels_the_send_and_a_dropped_one_unwinds_it() -> None:
    sock = Socket()
    outlet = Outlet(sock.send)
    sock.open.clear()
    assert not outlet.write(BODY)
    finishing = asyncio.create_task(outlet.finish_pending())
    await asyncio.sleep(0.01)
    finishing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await finishing
    assert (sock.sent, sock.unwound) == ([], 1)  # the send saw the cancellation
    assert not outlet.write(BODY)
    outlet.drop_pending()
    assert (sock.sent, sock.unwound, outlet.pending) == ([], 2, None)


async def test_a_send_that_fails_at_once_fails_whoever_awaits_the_rest() -> None:
    async def broken(message: Message) -> None:
        raise RuntimeError("the response is complete")

    outlet = Outlet(broken)
    assert not outlet.write(BODY)
    with pytest.raises(RuntimeError, match="the response is complete"):
        await outlet.finish_pending()


@PROTOCOLS
async def test_attached_sessions_get_every_frame_as_published_with_their_cors_headers(
    gateway: StartGateway, protocol: type[asyncio.Protocol] | None
) -> None:
    origin = "https://app.example"
    server = gateway(protocol=protocol, cors_allowed_origins=[origin], max_session_seconds=60)
    url = f"{server.url}/channels/written/events"
    async with httpx.AsyncClient(timeout=30, headers={"Origin": origin}) as http:
        readers = [
            asyncio.create_task(read_session(http, url, stop=lambda events: len(events) == 4))
            for _ in range(5)
        ]
        await asyncio.sleep(0.5)  # every session has caught up: attached
        ids = await publish(http, server.url, "written", {"data": "one"})
        # A batch: one write of two frames, one of them of several lines.
        batch = [{"event": "note", "data": "two\nlines"}, {"data": "three"}]
        ids += await publish(http, server.url, "written", {"events": batch})
        ids += await publish(http, server.url, "written", {"data": "four"})
        sessions = await asyncio.gather(*readers)
    expected = [
        (ids[0], "message", "one"),
        (ids[1], "note", "two\nlines"),
        (ids[2], "message", "three"),
        (ids[3], "message", "four"),
    ]
    for session in sessions:
        assert session.headers["access-control-allow-origin"] == origin
        events = [(e.last_event_id, e.type, json.loads(e.data)) for e in session.events]
        assert events == expected


@PROTOCOLS
async def test_a_reader_too_slow_for_the_feed_is_detached_and_loses_nothing(
    gateway: StartGateway, http: httpx.AsyncClient, protocol: type[asyncio.Protocol] | None
) -> None:
    # The slow reader reads nothing until every event is published: once the
    # sockets' buffers are full (4 MiB here), the server's writes to it have to
    # wait (flow control) while the feed goes on writing to the fast readers.
    server = gateway(protocol=protocol, max_session_seconds=60, feed_buffer_bytes=1 << 20)
    url = f"{server.url}/channels/mixed/events"
    window = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)]
    count = 100
    fast = [
        asyncio.create_task(read_session(http, url, stop=lambda events: len(events) == count))
        for _ in range(3)
    ]
    transport = httpx.AsyncHTTPTransport(socket_options=window)
    async with (
        httpx.AsyncClient(transport=transport, timeout=60) as slow_client,
        slow_client.stream("GET", url) as slow,
    ):
        await asyncio.sleep(0.5)  # every session has caught up: attached
        ids = []
        for n in range(count):  # 100 x 64 KiB: more than the sockets hold
            ids += await publish(http, server.url, "mixed", {"data": f"{n}:{'x' * 65_000}"})
        parser, events = EventStreamParser(), []
        async for chunk in slow.aiter_raw():
            events += parser.feed(chunk)
            if len(events) >= count:
                break
    assert [e.last_event_id for e in events] == ids
    assert [json.loads(e.data).split(":")[0] for e in events] == [str(n) for n in range(count)]
    for session in await asyncio.gather(*fast):
        assert [e.last_event_id for e in session.events] == ids
