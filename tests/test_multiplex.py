"""The multi-channel session (``/events``) at its edges, over real HTTP: a client
that leaves while its channels open, and a stream that breaks between any two
bytes. (Its everyday behaviour is in test_session.py.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx

from gateway.settings import Settings
from tests.eventstream import EventStreamParser, MessageEvent, read_session
from tests.servers import FaultProxy, GatewayServer, publish
from tests.tables import delete_items

StartGateway = Callable[..., GatewayServer]


def _envelopes(events: list[MessageEvent]) -> list[tuple[str, str]]:
    """(channel, id) of each event a client received, in order; resets left out."""
    return [
        (envelope["channel"], envelope["id"])
        for envelope in (json.loads(e.data) for e in events if e.type == "message")
    ]


async def test_a_client_that_leaves_while_its_channels_open_leaves_every_feed_it_took(
    gateway: StartGateway, http: httpx.AsyncClient, fault_proxy: FaultProxy
) -> None:
    server = gateway(dynamodb_endpoint_url=fault_proxy.url, max_feeds=40)
    fault_proxy.delay("query", 0.4)  # head queries answer late, a pool's worth at a time

    async def leave_early(client: int) -> None:
        params = [("channel", f"spray{client}-{n}") for n in range(16)]
        async with http.stream("GET", f"{server.url}/events", params=params) as response:
            assert response.status_code == 200
            # Leave once two rounds of the client pool's head queries have come back
            # (each answer lets the next query out): some channels subscribed, most
            # still asking.
            while fault_proxy.seen.count("query") < 30:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

    await asyncio.gather(*map(leave_early, range(8)))
    await asyncio.sleep(1.5)  # the queries still out come back
    fault_proxy.delay("query", 0)
    polled = fault_proxy.seen.count("query")
    await asyncio.sleep(1.0)  # five idle poll intervals (poll_max_seconds=0.2)
    # Today's main left 20 feeds polling here with nobody connected.
    assert fault_proxy.seen.count("query") == polled
    # And the process's feed limit is whole again for everyone else.
    reading = asyncio.create_task(
        read_session(http, f"{server.url}/events?channel=victim", stop=lambda e: len(e) == 1)
    )
    await asyncio.sleep(0.5)
    sent = await publish(http, server.url, "victim", {"data": "still served"})
    session = await asyncio.wait_for(reading, 10)
    assert _envelopes(session.events) == [("victim", sent[0])]


async def _read_bytes(http: httpx.AsyncClient, url: str, cursor: str, until: int) -> bytes:
    """The raw stream of one resumed session, until ``until`` events arrived."""
    parser = EventStreamParser()
    received: list[MessageEvent] = []
    raw = b""
    headers = {"Last-Event-ID": cursor}
    async with http.stream("GET", url, headers=headers) as response:
        async for chunk in response.aiter_raw():
            raw += chunk
            received += parser.feed(chunk)
            if len(received) >= until:
                return raw
    raise AssertionError(f"the session ended after {len(received)} events")


async def test_every_id_a_client_can_hold_resumes_every_event_it_has_not_received(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(max_session_seconds=2)
    url = f"{server.url}/events?channel=a&channel=b"
    await publish(http, server.url, "a", {"data": "a1"})
    await publish(http, server.url, "b", {"events": [{"data": "b1"}, {"data": "b2"}]})
    cursor = (await read_session(http, url, stop=lambda events: True)).last_event_id
    assert cursor  # the leading id-only frame of a fresh connection
    # One new event on a (in the newest item, which a resume reads without a query),
    # a batch on b, then one more on a in an item of its own.
    sent = [("a", i) for i in await publish(http, server.url, "a", {"data": "a2"})]
    body = {"events": [{"data": "b3"}, {"data": "b4"}]}
    sent += [("b", i) for i in await publish(http, server.url, "b", body)]
    sent += [("a", i) for i in await publish(http, server.url, "a", {"data": "a3"})]
    raw = await _read_bytes(http, url, cursor, until=len(sent))

    # The stream may break after any byte (a proxy's chunking, Lambda's streaming
    # path): the client then holds the id of the last frame it dispatched.
    held: dict[str, list[tuple[str, str]]] = {}
    for cut in range(len(raw) + 1):
        parser = EventStreamParser()
        parser.last_event_id = parser._id_buffer = cursor
        received = _envelopes(parser.feed(raw[:cut]))
        held.setdefault(parser.last_event_id, received)
        assert held[parser.last_event_id] == received  # one id, one set of events
    assert len(held) >= 3
    for last_event_id, received in held.items():
        resumed: list[tuple[str, str]] = []
        if len(received) < len(sent):
            missing = len(sent) - len(received)

            def enough(events: list[MessageEvent], missing: int = missing) -> bool:
                return len(_envelopes(events)) >= missing

            session = await read_session(http, url, last_event_id=last_event_id, stop=enough)
            resumed = _envelopes(session.events)
        by_channel: dict[str, list[str]] = {"a": [], "b": []}
        for channel, event_id in received + resumed:
            by_channel[channel].append(event_id)
        expected: dict[str, Any] = {
            channel: [i for c, i in sent if c == channel] for channel in ("a", "b")
        }
        assert by_channel == expected, (last_event_id, received, resumed)


async def test_a_cursor_of_an_epoch_ttl_deleted_whole_never_passes_for_the_next_one(
    gateway: StartGateway, http: httpx.AsyncClient, make_settings: Callable[..., Settings]
) -> None:
    # B's items expire; C opens above them; C expires and TTL deletes it whole,
    # while B's expired items are still there (TTL deletes in any order, days
    # late); D then opens above B's newest item again, at C's first seq.
    now = [1_000_000.0]
    server = gateway(clock=lambda: now[0], retention_seconds=600)
    url = f"{server.url}/events?channel=a&channel=b"
    for data in ("b1", "b2", "b3"):
        await publish(http, server.url, "a", {"data": data})
    now[0] += 601
    c = [(await publish(http, server.url, "a", {"data": f"c{n}"}))[0] for n in (4, 5, 6)]
    held = await read_session(http, f"{url}&rewind=3", stop=lambda e: len(e) == 3)
    assert _envelopes(held.events) == [("a", id_) for id_ in c]
    now[0] += 601
    await delete_items(make_settings(), "a", [6, 4, 5])
    d = [(await publish(http, server.url, "a", {"data": f"d{n}"}))[0] for n in (4, 5, 6, 7)]
    assert [id_.split("-")[1] for id_ in d] == ["4", "5", "6", "7"]  # C's seqs again
    resumed = await read_session(
        http,
        url,
        last_event_id=held.events[-1].last_event_id,
        stop=lambda e: ("a", d[-1]) in _envelopes(e),
    )
    # Main's D took the fingerprint after B's, which C had taken too: the cursor
    # of C-6 resumed at D-6 and D-4..6 were skipped without a reset.
    assert _envelopes(resumed.events) == [("a", id_) for id_ in d]
