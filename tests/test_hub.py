"""Channel feeds: memory bounded in bytes, feeds bounded in number, through real
servers over real HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx

from tests.eventstream import EventSourceClient, read_session
from tests.servers import (
    FaultProxy,
    GatewayProcess,
    GatewayServer,
    dynamodb_error,
    gauges,
    publish,
)

StartGateway = Callable[..., GatewayServer]
StartProcess = Callable[..., GatewayProcess]
BIG = "x" * 65_000  # with its JSON quotes, a 64 KiB event


def _unpolled(gateway: StartGateway, fault_proxy: FaultProxy, **overrides: Any) -> GatewayServer:
    """A server on the store through ``fault_proxy`` whose feeds poll 60 s apart: within
    a test they read the log as they start and when woken, and learn of publishes
    by hand-over only."""
    return gateway(
        dynamodb_endpoint_url=fault_proxy.url,
        poll_min_seconds=60,
        poll_max_seconds=60,
        **overrides,
    )


async def test_the_feed_buffer_is_bounded_in_bytes_and_readers_behind_it_lose_nothing(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    bound = 1 << 20
    server = gateway(feed_buffer_bytes=bound, max_session_seconds=30)
    url = f"{server.url}/channels/big/events"
    following = asyncio.create_task(read_session(http, url, stop=lambda events: len(events) == 40))
    await asyncio.sleep(0.3)
    ids, buffered = [], []
    for n in range(40):
        ids += await publish(http, server.url, "big", {"data": f"{n}{BIG}"})
        await asyncio.sleep(0.05)
        if (feed := server.hub.feeds.get("big")) is not None:
            buffered.append(feed.buffered_bytes)
    assert [e.last_event_id for e in (await following).events] == ids
    assert len(buffered) >= 30 and max(buffered) <= bound, buffered
    assert max(buffered) > bound // 2  # it did fill up: 40 events are 2.5 MiB
    # A reader from the start is older than the buffer: it reads the log instead.
    late = await read_session(
        http, url, last_event_id=ids[0], stop=lambda events: len(events) == 39
    )
    assert [e.last_event_id for e in late.events] == ids[1:]
    assert [e.data for e in late.events] == [json.dumps(f"{n}{BIG}") for n in range(1, 40)]


async def test_a_session_beyond_the_feed_limit_ends_with_retry_not_an_error(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(max_feeds=2, max_session_seconds=3, retry_ms=50)
    held = [
        asyncio.create_task(read_session(http, f"{server.url}/channels/{c}/events"))
        for c in ("one", "two")
    ]
    await asyncio.sleep(0.3)
    refused = await read_session(http, f"{server.url}/channels/three/events")
    assert (refused.status, refused.events, refused.retry) == (200, [], 50)
    over = await read_session(http, f"{server.url}/events?channel=one&channel=three")
    assert (over.status, over.retry) == (200, 50)
    assert sorted(server.hub.feeds) == ["one", "two"]  # the shared ones were not disturbed
    # A channel whose feed runs is always served.
    shared = read_session(http, f"{server.url}/channels/one/events", stop=lambda e: len(e) == 1)
    reading = asyncio.create_task(shared)
    await asyncio.sleep(0.3)
    (event_id,) = await publish(http, server.url, "one", {"data": 1})
    assert [e.last_event_id for e in (await reading).events] == [event_id]
    await asyncio.gather(*held)


async def test_one_session_under_64_kib_events_at_full_speed_keeps_memory_bounded(
    gateway_process: StartProcess, http: httpx.AsyncClient
) -> None:
    """A 128 MB Lambda budget: the feed holds at most SSE_GATEWAY_FEED_BUFFER_BYTES
    (8 MiB by default) where 1000 buffered 64 KiB events held 64 MB before."""
    server = gateway_process(max_session_seconds=60, retry_ms=50)
    url = f"{server.url}/channels/firehose/events"
    client = EventSourceClient(http, url)
    count = 800
    reading = asyncio.create_task(client.run(lambda events: len(events) >= count))
    await asyncio.sleep(0.5)
    await publish(http, server.url, "firehose", {"data": "warm up"})
    await asyncio.sleep(0.5)
    baseline = server.rss_bytes()

    async def publisher(n: int) -> None:
        for i in range(n, count - 1, 4):
            await publish(http, server.url, "firehose", {"data": f"{i}{BIG}"})

    await asyncio.gather(*map(publisher, range(4)))
    events = await asyncio.wait_for(reading, 120)
    assert len({e.last_event_id for e in events}) == count  # everything arrived, once
    growth = server.rss_bytes() - baseline
    # 800 events of 64 KiB are 52 MB: buffering them all would show.
    assert growth < 32 << 20, f"RSS grew by {growth / 2**20:.1f} MiB"


async def test_an_in_process_publish_is_handed_to_the_feed_without_a_query(
    gateway: StartGateway, http: httpx.AsyncClient, fault_proxy: FaultProxy
) -> None:
    # Polls 60 s apart: only the hand-over can deliver within the session.
    server = _unpolled(gateway, fault_proxy, max_session_seconds=3)
    url = f"{server.url}/channels/handed/events"
    await publish(http, server.url, "handed", {"data": "warms the writer's cached end"})
    reading = asyncio.create_task(read_session(http, url, stop=lambda events: len(events) == 3))
    await asyncio.sleep(0.3)
    queries = fault_proxy.seen.count("query")
    ids = await publish(http, server.url, "handed", {"events": [{"data": 1}, {"data": 2}]})
    ids += await publish(http, server.url, "handed", {"data": 3})
    session = await asyncio.wait_for(reading, 10)
    assert [e.last_event_id for e in session.events] == ids
    assert fault_proxy.seen.count("query") == queries  # no poll, no read: handed over


async def test_fresh_connections_join_a_running_feed_without_a_query_each(
    gateway: StartGateway, http: httpx.AsyncClient, fault_proxy: FaultProxy
) -> None:
    # Counted where an operator sees them: DynamoDB's requests at the proxy, the
    # feeds and sessions in /metrics.
    server = _unpolled(gateway, fault_proxy, max_session_seconds=3, metrics=True)
    url = f"{server.url}/channels/crowd/events"
    await publish(http, server.url, "crowd", {"data": 0})
    first = asyncio.create_task(read_session(http, url, stop=lambda events: len(events) == 1))
    await asyncio.sleep(0.3)
    queries = fault_proxy.seen.count("query")
    crowd = [
        asyncio.create_task(read_session(http, url, stop=lambda events: len(events) == 1))
        for _ in range(50)
    ]
    await asyncio.sleep(1)
    counted = await gauges(http, server.url)
    assert (counted["sse_gateway_open_sessions"], counted["sse_gateway_feeds"]) == (51, 1)
    assert fault_proxy.seen.count("query") == queries  # all started at the feed's position
    (event_id,) = await publish(http, server.url, "crowd", {"data": 1})
    sessions = await asyncio.gather(first, *crowd)
    assert all([e.last_event_id for e in s.events] == [event_id] for s in sessions)


async def test_a_head_read_before_a_handed_over_publish_is_no_restart(
    gateway: StartGateway, http: httpx.AsyncClient, fault_proxy: FaultProxy
) -> None:
    # Queries answer 0.3 s late: each of the feed's head checks (every 0.2 s) is
    # still out when this process's publishes are handed to the feed, and comes
    # back behind it. That is not the log starting over.
    fault_proxy.delay("query", 0.3)
    server = gateway(
        dynamodb_endpoint_url=fault_proxy.url,
        poll_min_seconds=0.05,
        poll_max_seconds=0.2,
        max_session_seconds=30,
    )
    url = f"{server.url}/channels/busy/events"
    await publish(http, server.url, "busy", {"data": "the channel has a log"})
    reading = asyncio.create_task(read_session(http, url, stop=lambda events: len(events) == 20))
    await asyncio.sleep(1)
    ids = []
    for n in range(20):
        ids += await publish(http, server.url, "busy", {"data": n})
        await asyncio.sleep(0.05)
    session = await asyncio.wait_for(reading, 20)
    # One session had them all: the feed did not end it for a restart.
    assert [e.last_event_id for e in session.events] == ids


async def test_a_session_resuming_within_the_running_feed_joins_it_without_a_query(
    gateway: StartGateway, http: httpx.AsyncClient, fault_proxy: FaultProxy
) -> None:
    server = _unpolled(gateway, fault_proxy, max_session_seconds=30)
    url = f"{server.url}/channels/resumed/events"
    (first,) = await publish(http, server.url, "resumed", {"data": "a"})
    following = asyncio.create_task(read_session(http, url, stop=lambda e: len(e) == 2))
    await asyncio.sleep(0.3)
    ids = await publish(http, server.url, "resumed", {"data": "b"})  # handed to the feed
    queries = fault_proxy.seen.count("query")
    resuming = [
        asyncio.create_task(
            read_session(http, url, last_event_id=last, stop=lambda e, n=n: len(e) == n)
        )
        for last, n in ((first, 2), (ids[0], 1))
    ]
    await asyncio.sleep(0.3)
    assert fault_proxy.seen.count("query") == queries  # the feed's buffer holds "b"
    ids += await publish(http, server.url, "resumed", {"data": "c"})
    sessions = await asyncio.wait_for(asyncio.gather(following, *resuming), 10)
    assert [[e.last_event_id for e in s.events] for s in sessions] == [ids, ids, ids[1:]]
    assert fault_proxy.seen.count("query") == queries  # "c" was handed over too


async def test_a_session_resuming_at_an_expired_feed_position_follows_it_into_a_new_epoch(
    gateway: StartGateway, http: httpx.AsyncClient, fault_proxy: FaultProxy
) -> None:
    # The feed polls only when woken.
    server = _unpolled(
        gateway,
        fault_proxy,
        max_session_seconds=30,
        retention_seconds=3,  # the channel's item expires within the test
        dynamodb_max_attempts=1,
        dynamodb_timeout_seconds=1,
    )
    url = f"{server.url}/channels/quiet/events"
    (old,) = await publish(http, server.url, "quiet", {"data": "before"})
    following = asyncio.create_task(read_session(http, url, stop=lambda e: len(e) == 2))
    await asyncio.sleep(3.2)  # the channel sat idle past its retention
    # It joins the running feed at its position: the feed knows nothing came since.
    resuming = asyncio.create_task(
        read_session(http, url, last_event_id=old, stop=lambda e: len(e) == 2)
    )
    await asyncio.sleep(0.3)
    # An epoch opens above the expired item; the feed watches it begin and moves to it.
    ids = await publish(http, server.url, "quiet", {"data": "after"})
    assert ids[0].split("-")[0] != old.split("-")[0]
    await asyncio.sleep(0.3)
    ids += await publish(http, server.url, "quiet", {"data": "later"})
    sessions = await asyncio.wait_for(asyncio.gather(following, resuming), 10)
    # Nothing restarted: both sessions go on, neither gets a reset.
    assert [[(e.type, e.last_event_id) for e in s.events] for s in sessions] == [
        [("message", i) for i in ids]
    ] * 2


async def _until(condition: Callable[[], object], seconds: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition never held"
        await asyncio.sleep(0.02)


async def _until_open(http: httpx.AsyncClient, server: GatewayServer, sessions: int) -> None:
    """Until ``/metrics`` counts ``sessions`` open sessions."""
    for _ in range(1500):
        if (await gauges(http, server.url))["sse_gateway_open_sessions"] == sessions:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the server never had {sessions} open sessions")


def _head_queries(proxy: FaultProxy) -> int:
    """Head queries the store received: newest first, one item."""
    return sum(
        t.operation == "query" and json.loads(t.body)["ScanIndexForward"] is False
        for t in proxy.traced
    )


async def test_a_connect_storm_on_a_cold_channel_costs_one_head_query(
    gateway: StartGateway, fault_proxy: FaultProxy
) -> None:
    # The feed reads once as it starts, then only when woken.
    server = _unpolled(gateway, fault_proxy, max_session_seconds=30, metrics=True)
    url = f"{server.url}/channels/cold/events"
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=None)) as http:
        (old,) = await publish(http, server.url, "cold", {"data": "before the storm"})
        heads, queries = _head_queries(fault_proxy), fault_proxy.seen.count("query")
        hold = fault_proxy.hold("query")  # the storm's one head query stays out
        fresh = [
            asyncio.create_task(read_session(http, url, stop=lambda e: len(e) == 1))
            for _ in range(150)
        ]
        resuming = [  # from the head the query will answer: nothing more to read
            asyncio.create_task(read_session(http, url, last_event_id=old, stop=lambda e: e != []))
            for _ in range(50)
        ]
        assert await asyncio.to_thread(hold.applied.wait, 10)
        await _until_open(http, server, 200)
        await asyncio.sleep(0.5)  # every session is waiting for the answer
        assert _head_queries(fault_proxy) == heads + 1
        hold.released.set()
        await _until(lambda: "cold" in server.hub.feeds)
        await asyncio.sleep(0.5)
        ids = await publish(http, server.url, "cold", {"data": "after"})
        sessions = await asyncio.wait_for(asyncio.gather(*fresh, *resuming), 30)
    # Each had the event, once; the storm cost its head query and the new feed's
    # first read of the log, and nothing per connection.
    assert all([e.last_event_id for e in s.events] == ids for s in sessions)
    assert _head_queries(fault_proxy) == heads + 1
    assert fault_proxy.seen.count("query") == queries + 2


async def test_when_the_storms_one_head_query_fails_every_waiting_session_ends_alike(
    gateway: StartGateway, fault_proxy: FaultProxy
) -> None:
    server = gateway(
        dynamodb_endpoint_url=fault_proxy.url,
        dynamodb_max_attempts=1,  # the error reaches the gateway, not botocore's retry
        retry_ms=50,
        overload_retry_ms=700,  # what a session ended by a store error says
        metrics=True,
    )
    url = f"{server.url}/channels/cold/events"
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=None)) as http:
        (old,) = await publish(http, server.url, "cold", {"data": "before the storm"})
        queries = fault_proxy.seen.count("query")
        hold = fault_proxy.hold("query")
        fault_proxy.fail("query", dynamodb_error("InternalServerError", "Internal server error"))
        storm = [
            asyncio.create_task(read_session(http, url, last_event_id=last))
            for last in [None] * 100 + [old] * 100
        ]
        assert await asyncio.to_thread(hold.applied.wait, 10)
        await _until_open(http, server, 200)
        await asyncio.sleep(0.5)  # every session is waiting for the answer
        hold.released.set()
        sessions = await asyncio.wait_for(asyncio.gather(*storm), 30)
        # Each ended at once with the overload retry, no frame before it; one query
        # failed for all of them, and nothing of the storm is left behind.
        assert [(s.status, s.events) for s in sessions] == [(200, [])] * 200
        assert all(350 <= (s.retry or 0) <= 700 for s in sessions)  # jittered, not retry_ms
        assert fault_proxy.seen.count("query") == queries + 1
        assert (server.hub.head_queries, server.hub.feeds) == (0, {})
        # The next session asks again, and is served.
        following = asyncio.create_task(read_session(http, url, stop=lambda e: e != []))
        await _until(lambda: "cold" in server.hub.feeds)
        ids = await publish(http, server.url, "cold", {"data": "after"})
        assert [e.last_event_id for e in (await following).events] == ids


async def test_sessions_that_leave_while_waiting_for_the_head_leave_nothing_behind(
    gateway: StartGateway, fault_proxy: FaultProxy
) -> None:
    server = gateway(dynamodb_endpoint_url=fault_proxy.url, max_session_seconds=30, metrics=True)
    url = f"{server.url}/channels/cold/events"
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=None)) as http:
        await publish(http, server.url, "cold", {"data": "before"})
        hold = fault_proxy.hold("query")
        waiting = [
            asyncio.create_task(read_session(http, url, stop=lambda e: e != [])) for _ in range(5)
        ]
        assert await asyncio.to_thread(hold.applied.wait, 10)
        await _until_open(http, server, 5)
        for task in waiting[:4]:  # four clients go; the query goes on for the fifth
            task.cancel()
        await _until_open(http, server, 1)
        assert server.hub.head_queries == 1
        hold.released.set()
        await _until(lambda: "cold" in server.hub.feeds)
        ids = await publish(http, server.url, "cold", {"data": "for the fifth"})
        assert [e.last_event_id for e in (await waiting[4]).events] == ids
        await _until(lambda: server.hub.feeds == {})
        # When every waiting client goes, the query is given up: no feed starts.
        hold = fault_proxy.hold("query")
        gone = [asyncio.create_task(read_session(http, url)) for _ in range(3)]
        assert await asyncio.to_thread(hold.applied.wait, 10)
        await _until_open(http, server, 3)
        for task in gone:
            task.cancel()
        await _until_open(http, server, 0)
        await _until(lambda: server.hub.head_queries == 0)
        hold.released.set()
        await asyncio.sleep(0.3)
        assert server.hub.feeds == {}


async def test_a_rewind_starts_from_the_running_feed_its_buffer_or_the_log_behind_it(
    gateway: StartGateway, http: httpx.AsyncClient, fault_proxy: FaultProxy
) -> None:
    server = _unpolled(gateway, fault_proxy, max_session_seconds=30)
    url = f"{server.url}/channels/rewound/events"
    ids = [(await publish(http, server.url, "rewound", {"data": n}))[0] for n in range(3)]
    following = asyncio.create_task(read_session(http, url, stop=lambda e: len(e) == 3))
    await asyncio.sleep(0.3)
    ids += [(await publish(http, server.url, "rewound", {"data": n}))[0] for n in (3, 4)]
    heads, queries = _head_queries(fault_proxy), fault_proxy.seen.count("query")
    # Two back: both in the feed's buffer, no query at all.
    near = await read_session(http, url, params={"rewind": "2"}, stop=lambda e: len(e) == 2)
    assert [e.last_event_id for e in near.events] == ids[3:]
    assert fault_proxy.seen.count("query") == queries
    # Four back: older than the buffer, read from the log, without a head query.
    far = await read_session(http, url, params={"rewind": "4"}, stop=lambda e: len(e) == 4)
    assert [e.last_event_id for e in far.events] == ids[1:]
    assert _head_queries(fault_proxy) == heads
    ids += await publish(http, server.url, "rewound", {"data": 5})
    assert [e.last_event_id for e in (await following).events] == ids[3:]


async def test_a_head_answer_read_before_the_feeds_first_event_does_not_restart_it(
    gateway: StartGateway, http: httpx.AsyncClient, fault_proxy: FaultProxy
) -> None:
    # The feed looks at the head once, as it starts.
    server = _unpolled(gateway, fault_proxy, max_session_seconds=30)
    url = f"{server.url}/channels/first/events"
    # The first session finds the channel empty and starts its feed, whose first look
    # at the head stays out: the feed is not joinable yet.
    answered = fault_proxy.hold("query")
    first = asyncio.create_task(read_session(http, url, stop=lambda e: len(e) == 2))
    assert await asyncio.to_thread(answered.applied.wait, 10)
    feeds_look = fault_proxy.hold("query")
    answered.released.set()
    assert await asyncio.to_thread(feeds_look.applied.wait, 10)
    # The second session's head query reads the empty log too; its answer comes back
    # after the feed took the channel's first event.
    stale = fault_proxy.hold("query")
    second = asyncio.create_task(read_session(http, url, stop=lambda e: len(e) == 1))
    assert await asyncio.to_thread(stale.applied.wait, 10)
    ids = await publish(http, server.url, "first", {"data": 1})  # handed to the feed
    stale.released.set()
    await _until(lambda: server.hub.head_queries == 0)
    await asyncio.sleep(0.3)  # the second session has joined (or restarted) the feed
    ids += await publish(http, server.url, "first", {"data": 2})
    sessions = await asyncio.wait_for(asyncio.gather(first, second), 20)
    feeds_look.released.set()
    # The feed went on: the first session had both events in one session, and the
    # second joined at the feed's position, as any session that finds a feed running.
    assert [e.last_event_id for e in sessions[0].events] == ids
    assert [e.last_event_id for e in sessions[1].events] == ids[1:]
    assert sessions[1].events[0].type == "message"


async def test_a_hung_head_query_holds_the_sessions_behind_it_one_attempt_timeout_at_most(
    gateway: StartGateway, http: httpx.AsyncClient, fault_proxy: FaultProxy
) -> None:
    # The store does not answer the first head query; the attempt's read timeout
    # gives it up and botocore asks again, and every waiter takes that answer.
    # No head check of the feed's own within the test.
    server = _unpolled(
        gateway,
        fault_proxy,
        dynamodb_timeout_seconds=1,
        dynamodb_max_attempts=2,
        max_session_seconds=20,  # far longer than the attempt's timeout
        metrics=True,
    )
    url = f"{server.url}/channels/hung/events"
    (old,) = await publish(http, server.url, "hung", {"data": "before"})
    heads = _head_queries(fault_proxy)
    hung = fault_proxy.hold("query")
    first = asyncio.create_task(read_session(http, url, stop=lambda e: e != []))
    assert await asyncio.to_thread(hung.applied.wait, 10)
    # Later arrivals, fresh and resuming, wait for the same query: it is the
    # channel's one head query out, hung or not.
    later = [
        asyncio.create_task(read_session(http, url, last_event_id=last, stop=lambda e: e != []))
        for last in (None, old)
    ]
    await _until_open(http, server, 3)
    await _until(lambda: "hung" in server.hub.feeds)  # the second attempt answered
    ids = await publish(http, server.url, "hung", {"data": "after"})
    # Served from the retry, while the first attempt is still held: a session that
    # waited for it would wait past its own end (the proxy holds it for 30 s).
    sessions = await asyncio.gather(first, *later)
    hung.released.set()
    assert [[e.last_event_id for e in s.events] for s in sessions] == [ids] * 3
    assert _head_queries(fault_proxy) == heads + 2  # the hung attempt and its retry
