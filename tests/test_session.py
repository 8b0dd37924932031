"""Sessions at the log's edges, over real HTTP: TTL deleting out of order, a log
that starts over, batches half visible to a reader, mixed epochs, a hung store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gateway.cursor import parse_event_id
from gateway.items import Batch, StoredEvent, batch_item
from tests.eventstream import EventSourceClient, MessageEvent, read_session
from tests.servers import FaultProxy, GatewayServer, gauges, publish
from tests.tables import FAST_EXPIRY, delete_items, put_raw_items

StartGateway = Callable[..., GatewayServer]


@pytest.mark.parametrize("resume_from", [4, 3, 1])
async def test_ttl_deleting_the_newest_items_first_never_reuses_an_id(
    gateway: StartGateway, http: httpx.AsyncClient, resume_from: int
) -> None:
    server = gateway(**FAST_EXPIRY, max_session_seconds=3)
    old = [(await publish(http, server.url, "c", {"data": i}))[0] for i in range(1, 6)]
    await asyncio.sleep(2.1)
    await delete_items(server.settings, "c", [5, 4])  # TTL's order is any order
    other = gateway(**FAST_EXPIRY)  # a process that never cached the head
    new = await publish(http, other.url, "c", {"events": [{"data": "x"}, {"data": "y"}]})
    assert not set(new) & set(old), (old, new)

    session = await read_session(
        http,
        f"{server.url}/channels/c/events",
        last_event_id=old[resume_from - 1],
        stop=lambda events: len(events) == 3,
    )
    assert [e.type for e in session.events] == ["reset", "message", "message"]
    assert [e.last_event_id for e in session.events[1:]] == new
    assert [json.loads(e.data) for e in session.events[1:]] == ["x", "y"]


async def test_a_new_session_on_a_restarted_log_gets_a_feed_of_the_new_epoch(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(max_session_seconds=8)
    url = f"{server.url}/channels/c/events"
    holding = asyncio.create_task(read_session(http, url, stop=lambda events: False))
    await asyncio.sleep(0.3)
    old = await publish(http, server.url, "c", {"events": [{"data": i} for i in range(6)]})
    await asyncio.sleep(0.3)  # the running feed buffers them
    await delete_items(server.settings, "c", range(1, 7))  # the channel is purged
    other = gateway()  # another process starts it over
    restarted = await publish(http, other.url, "c", {"events": [{"data": "a"}, {"data": "b"}]})
    assert parse_event_id(restarted[0]) != parse_event_id(old[0])
    # The feed looks at the head at least every poll_max_seconds (0.2 s here); fresh
    # sessions join it without a query only while it has (see ChannelHub.joinable).
    await asyncio.sleep(0.5)
    assert "c" not in server.hub.feeds  # it saw the log start over, and stopped
    fresh = asyncio.create_task(read_session(http, url, stop=lambda events: len(events) == 1))
    await asyncio.sleep(0.5)
    (later,) = await publish(http, other.url, "c", {"data": "c"})
    session = await asyncio.wait_for(fresh, 10)
    assert [e.last_event_id for e in session.events] == [later]
    holding.cancel()
    await asyncio.gather(holding, return_exceptions=True)


async def test_after_a_purge_under_a_writer_with_a_cached_end_every_event_is_delivered_or_reset(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    p1, p2 = gateway(), gateway()
    old = [(await publish(http, p1.url, "c", {"data": i}))[0] for i in range(6)]  # p1 caches 6
    await delete_items(p1.settings, "c", range(1, 7))  # purged, oldest first
    new = [(await publish(http, p2.url, "c", {"data": v}))[0] for v in "abc"]
    new += await publish(http, p1.url, "c", {"data": "late"})  # p1's cached end is gone
    new += [(await publish(http, p2.url, "c", {"data": v}))[0] for v in "de"]
    assert not set(new) & set(old)
    for server in (p1, p2):
        session = await read_session(
            http,
            f"{server.url}/channels/c/events",
            last_event_id=old[-1],
            stop=lambda events: len(events) == 7,
        )
        reset, *events = session.events
        assert (reset.type, json.loads(reset.data)["reason"]) == ("reset", "channel_restarted")
        assert [e.last_event_id for e in events] == new
        assert [json.loads(e.data) for e in events] == ["a", "b", "c", "late", "d", "e"]


@pytest.mark.parametrize("idempotency_key", [None, "batch-1"])
async def test_a_half_visible_batch_causes_no_skip_and_no_false_reset(
    gateway: StartGateway,
    http: httpx.AsyncClient,
    fault_proxy: FaultProxy,
    idempotency_key: str | None,
) -> None:
    server = gateway(dynamodb_endpoint_url=fault_proxy.url, max_session_seconds=6)
    (first,) = await publish(http, server.url, "c", {"data": 1})
    reading = asyncio.create_task(
        read_session(
            http,
            f"{server.url}/channels/c/events",
            last_event_id=first,
            stop=lambda events: len(events) >= 3,
        )
    )
    await asyncio.sleep(0.3)
    fault_proxy.split_transactions = True  # what Query may see of TransactWriteItems
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    batch = await publish(
        http, server.url, "c", {"events": [{"data": 2}, {"data": 3}, {"data": 4}]}, **headers
    )
    session = await asyncio.wait_for(reading, 10)
    assert [(e.type, e.last_event_id) for e in session.events] == [
        ("message", event_id) for event_id in batch
    ]


async def test_a_session_ends_with_retry_by_its_deadline_when_dynamodb_hangs(
    gateway: StartGateway, http: httpx.AsyncClient, fault_proxy: FaultProxy
) -> None:
    # Five attempts of five seconds each: a store call alone could block ~25 s.
    server = gateway(
        dynamodb_endpoint_url=fault_proxy.url,
        dynamodb_max_attempts=5,
        dynamodb_timeout_seconds=5,
        max_session_seconds=1.5,
    )
    await publish(http, server.url, "c", {"data": 1})
    fault_proxy.stall = True
    hang = 5 * 5
    for last_event_id in (None, "0"):  # a fresh session, and one that must replay
        started = time.monotonic()
        session = await read_session(
            http, f"{server.url}/channels/c/events", last_event_id=last_event_id
        )
        # Correctness, not speed: the session's own deadline bounds every store call,
        # so it ends nearer its 1.5 s deadline than the store's hang (slack for the machine).
        assert time.monotonic() - started < (1.5 + hang) / 2
        assert (session.status, session.events, session.retry) == (200, [], 50)


def _hand_written(channel: str, epoch: str, since: int, seq: int, data: str) -> dict[str, Any]:
    event = StoredEvent(epoch, seq, json.dumps(data), since=since)
    return batch_item(channel, Batch((event,), int(time.time()) + 3600, f"hand-{seq}"))


async def test_a_log_mixed_by_a_hand_edit_is_delivered_without_a_reconnect_loop(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(max_session_seconds=1.0)
    a, b = "aaaaaaaa", "bbbbbbbb"
    await put_raw_items(
        server.settings,
        [
            _hand_written("c", a, 1, 1, "a1"),
            _hand_written("c", b, 2, 2, "b2"),
            _hand_written("c", a, 1, 3, "a3"),  # epoch a again, as no writer of ours does
            _hand_written("c", b, 2, 4, "b4"),
        ],
    )
    url = f"{server.url}/channels/c/events"
    for last_event_id in ("0", f"{a}-1", f"{b}-2", "garbage"):
        session = await read_session(http, url, last_event_id=last_event_id)
        assert session.retry == 50  # the session ran to its deadline
        assert session.last_event_id == f"{b}-4", (last_event_id, session.events)
        if last_event_id != "garbage":  # which starts at the head: nothing to replay
            assert session.events[-1].data == '"b4"'
            assert "reset" in [e.type for e in session.events]
        # Where it ended is where it stays: the next session has nothing left to send.
        started = time.monotonic()
        after = await read_session(http, url, last_event_id=session.last_event_id)
        assert (after.events, after.retry) == ([], 50)
        assert time.monotonic() - started > 0.5  # it ran, rather than ending at once


async def test_a_live_session_follows_a_new_epoch_it_saw_begin_without_a_reset(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(**FAST_EXPIRY, max_session_seconds=8)
    url = f"{server.url}/channels/c/events"
    (old,) = await publish(http, server.url, "c", {"data": "old"})
    live = asyncio.create_task(read_session(http, url, stop=lambda events: len(events) == 1))
    await asyncio.sleep(2.5)  # the channel sat idle past its retention
    (new,) = await publish(http, server.url, "c", {"data": "new"})
    assert new.endswith("-2") and new.split("-")[0] != old.split("-")[0]  # a new epoch
    session = await asyncio.wait_for(live, 10)
    assert [(e.type, e.last_event_id) for e in session.events] == [("message", new)]
    # No feed watched the switch for a client that comes back later: it is told.
    resumed = await read_session(http, url, last_event_id=old, stop=lambda events: len(events) == 2)
    assert [(e.type, e.last_event_id) for e in resumed.events][1:] == [("message", new)]
    assert json.loads(resumed.events[0].data)["reason"] == "history_expired"


# Multi-channel sessions: /events?channel=a&channel=b


def _envelopes(events: list[MessageEvent]) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in events if e.type == "message"]


async def test_a_multi_channel_session_delivers_each_channel_once_in_order_across_reconnects(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(max_session_seconds=1, retry_ms=50)
    channels = ["orders:1", "user:7", "jobs:3"]
    query = "&".join(f"channel={c}" for c in channels)
    client = EventSourceClient(http, f"{server.url}/events?{query}")
    await publish(http, server.url, "orders:1", {"data": "before the connection"})
    reading = asyncio.create_task(client.run(lambda events: len(_envelopes(events)) >= 90))
    await asyncio.sleep(0.3)

    async def publish_paced(channel: str) -> list[tuple[str, Any]]:
        sent = []
        for n in range(15):
            body = {"events": [{"data": {"n": n}}, {"event": "status", "data": [n, channel]}]}
            ids = await publish(http, server.url, channel, body)
            sent += [(ids[0], {"n": n}), (ids[1], [n, channel])]
            await asyncio.sleep(0.1)
        return sent

    sent = dict(zip(channels, await asyncio.gather(*map(publish_paced, channels)), strict=True))
    events = await asyncio.wait_for(reading, 30)
    assert client.sessions_ended >= 2
    assert all(e.type == "message" for e in events)  # no reset, no other event type
    envelopes = _envelopes(events)
    for channel in channels:
        got = [(e["id"], e["data"]) for e in envelopes if e["channel"] == channel]
        assert got == sent[channel]  # each once, in order; nothing from before
        types = [e["event"] for e in envelopes if e["channel"] == channel]
        assert types == [None, "status"] * 15
    assert all(SAFE_CURSOR.fullmatch(e.last_event_id) for e in events)


SAFE_CURSOR = re.compile(r"[0-9A-Za-z._~-]{1,128}")


async def test_a_cursor_resumes_the_channels_it_names_and_starts_the_others_at_their_head(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(max_session_seconds=0.5)
    first = await read_session(http, f"{server.url}/events?channel=a&channel=b")
    assert first.events == []
    cursor = first.last_event_id
    await publish(http, server.url, "a", {"data": "a1"})
    b = await publish(http, server.url, "b", {"events": [{"data": "b1"}, {"data": "b2"}]})
    await publish(http, server.url, "c", {"data": "c1"})
    second = await read_session(
        http, f"{server.url}/events?channel=b&channel=c&last_event_id={cursor}"
    )
    # a is not requested; b resumes after its position; c starts at its head, quietly.
    assert [(e["channel"], e["id"]) for e in _envelopes(second.events)] == [
        ("b", b[0]),
        ("b", b[1]),
    ]
    c = await publish(http, server.url, "c", {"data": "c2"})
    third = await read_session(
        http, f"{server.url}/events?channel=a&channel=c", last_event_id=second.last_event_id
    )
    # a's event was published after the first cursor, but the second cursor (of b
    # and c) no longer holds a: a starts at its head.
    assert [(e["channel"], e["id"]) for e in _envelopes(third.events)] == [("c", c[0])]


async def test_a_malformed_cursor_resets_every_channel_to_its_head(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(max_session_seconds=0.5)
    heads = {c: (await publish(http, server.url, c, {"data": c}))[0] for c in ("x", "y")}
    session = await read_session(
        http, f"{server.url}/events?channel=x&channel=y", last_event_id="abcdef01-3"
    )
    resets = [json.loads(e.data) for e in session.events if e.type == "reset"]
    assert sorted(resets, key=lambda r: r["channel"]) == [
        {
            "channel": c,
            "reason": "invalid_last_event_id",
            "last_event_id": None,
            "continues_after": heads[c],
        }
        for c in ("x", "y")
    ]
    assert _envelopes(session.events) == []


async def test_a_multi_channel_reset_names_its_channel_and_the_stream_goes_on(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(max_session_seconds=5, **FAST_EXPIRY)
    first = await read_session(
        http, f"{server.url}/events?channel=old&channel=live", stop=lambda events: True
    )
    await publish(http, server.url, "old", {"data": 1})
    live = await publish(http, server.url, "live", {"data": "kept"})
    held = await read_session(
        http,
        f"{server.url}/events?channel=old&channel=live",
        last_event_id=first.last_event_id,
        stop=lambda events: len(events) == 2,
    )
    assert [e["id"] for e in _envelopes(held.events) if e["channel"] == "live"] == live
    await asyncio.sleep(3.1)  # every item expires
    new = await publish(http, server.url, "old", {"data": 2})
    session = await read_session(
        http,
        f"{server.url}/events?channel=old&channel=live",
        last_event_id=held.last_event_id,
        stop=lambda events: len(events) == 2,
    )
    reset, message = session.events
    assert reset.type == "reset"
    assert json.loads(reset.data) == {
        "channel": "old",
        "reason": "history_expired",
        "last_event_id": None,  # a cursor holds an old epoch only by its fingerprint
        "continues_after": f"{new[0].split('-')[0]}-1",
    }
    # The other channel's position stood throughout: its event is not repeated.
    assert json.loads(message.data) == {"channel": "old", "event": None, "id": new[0], "data": 2}


async def test_connections_on_many_channels_share_one_tail_per_channel(
    gateway: StartGateway, http: httpx.AsyncClient, fault_proxy: FaultProxy
) -> None:
    # Counted as an operator would: DynamoDB's queries at the proxy, feeds in /metrics.
    server = gateway(
        max_session_seconds=1.5,
        poll_min_seconds=0.1,
        poll_max_seconds=0.1,
        metrics=True,
        dynamodb_endpoint_url=fault_proxy.url,
    )
    url = f"{server.url}/events?channel=p&channel=q&channel=r"

    async def queries_with(connections: int) -> int:
        tasks = [asyncio.create_task(read_session(http, url)) for _ in range(connections)]
        await asyncio.sleep(0.5)
        now = await gauges(http, server.url)
        assert (now["sse_gateway_feeds"], now["sse_gateway_open_sessions"]) == (3, connections)
        before = fault_proxy.seen.count("query")
        await asyncio.sleep(0.8)
        counted = fault_proxy.seen.count("query") - before
        await asyncio.gather(*tasks)
        return counted

    one, ten = await queries_with(1), await queries_with(10)
    assert 0 < one <= 3 * 10  # polled, at most one query per channel per 0.1 s poll
    assert ten <= 2 * one + 6, (one, ten)


# Cost shaping: idle release and jittered session lengths


async def test_an_idle_session_ends_early_with_the_idle_retry_and_loses_nothing(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(
        max_session_seconds=30, idle_session_seconds=0.4, idle_retry_ms=300, session_jitter=0
    )
    url = f"{server.url}/channels/quiet/events"
    idle = await read_session(http, url)
    assert (idle.events, idle.retry) == ([], 300)  # released by idleness, not the 30 s deadline
    # Events published while the browser stays away arrive on its return, once each:
    # it resumes from the position the idle session pinned (a fresh EventSource would
    # start at the head, after whatever was published while it connected).
    client = EventSourceClient(http, url, last_event_id=idle.last_event_id)
    reading = asyncio.create_task(client.run(lambda events: len(events) == 6))
    ids = []
    for n in range(6):
        ids += await publish(http, server.url, "quiet", {"data": n})
        await asyncio.sleep(0.25 if n % 2 else 0.6)
    events = await asyncio.wait_for(reading, 30)
    assert [e.last_event_id for e in events] == ids
    assert client.sessions_ended >= 1


async def test_a_busy_session_is_not_idle_and_ends_with_the_normal_retry(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    # Idle after 1 s without an event while one is published every 0.1 s: a loaded
    # machine's slow publish must not pass for idleness.
    server = gateway(
        max_session_seconds=3, idle_session_seconds=1.0, idle_retry_ms=300, session_jitter=0
    )
    url = f"{server.url}/channels/busy/events"
    # From before the first event, so none is published before the session reads.
    reading = asyncio.create_task(read_session(http, url, last_event_id="0"))

    ids: list[str] = []
    while not reading.done():
        ids += await publish(http, server.url, "busy", {"data": len(ids)})
        await asyncio.sleep(0.1)
    session = await reading
    assert session.retry == 50  # the deadline ended it, not idleness
    # Exactly the events published up to its end, in order; those published as it
    # ended come with the next session, so none is lost.
    delivered = [e.last_event_id for e in session.events]
    assert delivered == ids[: len(delivered)]
    rest = await read_session(
        http,
        url,
        last_event_id=session.last_event_id,
        stop=lambda e: len(e) == len(ids) - len(delivered),
    )
    assert delivered + [e.last_event_id for e in rest.events] == ids


async def test_a_quiet_multi_channel_session_ends_idle_with_the_idle_retry(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(
        max_session_seconds=30,
        idle_session_seconds=0.3,
        idle_retry_ms=2500,
        retry_ms=70,
        session_jitter=0,
    )
    quiet = await read_session(http, f"{server.url}/events?channel=q1&channel=q2")
    assert (quiet.status, quiet.events, quiet.retry) == (200, [], 2500)


@pytest.mark.parametrize(("heartbeat", "beats"), [(0.2, True), (60, False)])
async def test_a_quiet_session_carries_a_comment_after_each_heartbeat_interval_only(
    gateway: StartGateway, http: httpx.AsyncClient, heartbeat: float, beats: bool
) -> None:
    server = gateway(max_session_seconds=1.2, heartbeat_seconds=heartbeat, session_jitter=0)
    quiet = await read_session(http, f"{server.url}/events?channel=h1&channel=h2")
    assert (quiet.events, quiet.retry) == ([], 50)
    # Every 0.2 s of a 1.2 s session (the first one some way in); none in 60 s.
    assert (len(quiet.comments) >= 2) if beats else (quiet.comments == [])
    assert set(quiet.comments) <= {""}  # bare ":" lines


async def test_session_lengths_are_spread_over_the_jitter(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(max_session_seconds=2, session_jitter=0.9)
    url = f"{server.url}/channels/herd/events"

    async def length() -> float:
        started = time.monotonic()
        await read_session(http, url)
        return time.monotonic() - started

    lengths = sorted(await asyncio.gather(*(length() for _ in range(8))))
    # Drawn from [0.2 s, 2 s]: eight clients that came together leave apart.
    assert lengths[-1] - lengths[0] > 0.3, lengths
    assert lengths[-1] < 2 + 3, lengths  # never past the maximum (with slack for the machine)


def _queried(proxy: FaultProxy, channel: str) -> list[bytes]:
    """The Query requests that reached the store for ``channel``."""
    quoted = f'"{channel}"'.encode()
    return [r.body for r in proxy.traced if r.operation == "query" and quoted in r.body]


async def test_a_session_refused_by_the_feed_limit_pays_no_store_call_and_backs_off(
    gateway: StartGateway, http: httpx.AsyncClient, fault_proxy: FaultProxy
) -> None:
    server = gateway(
        dynamodb_endpoint_url=fault_proxy.url,
        max_feeds=1,
        overload_retry_ms=20_000,
        max_session_seconds=30,
    )
    following = asyncio.create_task(read_session(http, f"{server.url}/channels/followed/events"))
    while "followed" not in server.hub.feeds:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    refused = [
        await read_session(http, f"{server.url}/channels/refused-one/events"),
        await read_session(http, f"{server.url}/channels/refused-one/events", last_event_id="0"),
        await read_session(http, f"{server.url}/events?channel=refused-two&channel=followed"),
        await read_session(http, f"{server.url}/events?channel=refused-two"),
    ]
    joined = await read_session(
        http, f"{server.url}/channels/followed/events", stop=lambda events: True
    )
    following.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await following

    assert _queried(fault_proxy, "followed")  # what is counted is what reaches the store
    assert _queried(fault_proxy, "refused-one") == _queried(fault_proxy, "refused-two") == []
    for session in refused:
        assert (session.status, session.events) == (200, [])
        assert session.retry is not None and 10_000 <= session.retry <= 20_000
    assert len({session.retry for session in refused}) > 1  # jittered, not in step
    assert joined.status == 200 and joined.last_event_id == "0"  # a followed channel: room kept


async def _channel_of(
    http: httpx.AsyncClient, url: str, channel: str, sizes: list[int]
) -> list[str]:
    ids: list[str] = []
    for size in sizes:
        body = {"events": [{"data": [channel, len(ids) + i]} for i in range(size)]}
        ids += await publish(http, url, channel, body)
    return ids


@pytest.mark.parametrize(
    ("rewind", "sizes", "expected"),
    [
        (0, [1] * 6, 0),  # at the head, as without rewind
        (3, [1] * 6, 3),  # within the newest items
        (5, [2, 3, 4], 5),  # within, starting inside a batch
        (1000, [1, 2, 3], 6),  # beyond: the whole log
    ],
)
async def test_a_rewound_session_starts_that_many_events_before_the_head_then_follows(
    gateway: StartGateway, http: httpx.AsyncClient, rewind: int, sizes: list[int], expected: int
) -> None:
    server = gateway(max_session_seconds=10)
    ids = await _channel_of(http, server.url, "r", sizes)
    live: list[str] = []

    async def publish_live() -> None:
        await asyncio.sleep(0.3)
        live.extend(await publish(http, server.url, "r", {"data": "live"}))

    publishing = asyncio.create_task(publish_live())
    session = await read_session(
        http,
        f"{server.url}/channels/r/events",
        params={"rewind": str(rewind)},
        stop=lambda events: any(e.data == '"live"' for e in events),
    )
    await publishing
    rewound = ids[len(ids) - expected :]
    assert [e.type for e in session.events] == ["message"] * (expected + 1)  # no reset
    assert [e.last_event_id for e in session.events] == rewound + live


async def test_a_rewind_past_what_ttl_deleted_starts_at_the_oldest_retained_event(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(max_session_seconds=0.5)
    ids = await _channel_of(http, server.url, "t", [2, 1, 3])  # items at 1, 3, 4
    await delete_items(server.settings, "t", [1, 3])  # TTL took the oldest items
    for params in ({"rewind": "1000"}, {"rewind": "5"}):
        session = await read_session(http, f"{server.url}/channels/t/events", params=params)
        assert [(e.type, e.last_event_id) for e in session.events] == [
            ("message", i) for i in ids[3:]
        ]


async def test_a_rewind_is_ignored_when_the_client_holds_a_position(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(max_session_seconds=0.5)
    ids = await _channel_of(http, server.url, "p", [1] * 8)
    url = f"{server.url}/channels/p/events"
    resumed = await read_session(http, url, last_event_id=ids[5], params={"rewind": "6"})
    assert [e.last_event_id for e in resumed.events] == ids[6:]
    by_query = await read_session(http, url, params={"rewind": "6", "last_event_id": ids[6]})
    assert [e.last_event_id for e in by_query.events] == ids[7:]
    # An id that is not ours is no position: a reset, then where a rewind starts.
    invalid = await read_session(http, url, params={"rewind": "2", "last_event_id": "*"})
    reset, *events = invalid.events
    assert json.loads(reset.data)["reason"] == "invalid_last_event_id"
    assert reset.last_event_id == ids[5]
    assert [e.last_event_id for e in events] == ids[6:]


async def test_a_rewound_session_that_ends_before_its_first_event_resumes_from_its_start(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    """The session's first frame carries the rewind's start, so EventSource's reconnect
    (Last-Event-ID, and the same URL with its rewind) neither rewinds again nor skips."""
    server = gateway(max_session_seconds=0.5)
    ids = await _channel_of(http, server.url, "s", [4])
    first = await read_session(
        http, f"{server.url}/channels/s/events", params={"rewind": "3"}, stop=lambda e: False
    )
    assert [e.last_event_id for e in first.events] == ids[1:]
    cut = await read_session(
        http,
        f"{server.url}/channels/s/events",
        params={"rewind": "3"},
        stop=lambda events: True,  # gone after the first chunk: the start's id alone
    )
    assert cut.events == [] and cut.last_event_id == ids[0]
    again = await read_session(
        http, f"{server.url}/channels/s/events", params={"rewind": "3"}, last_event_id=ids[0]
    )
    assert [e.last_event_id for e in again.events] == ids[1:]


async def test_a_rewind_whose_events_all_expired_resumes_as_a_session_at_the_head_would(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    """Nothing the rewind reached for is retained: the client is told the head, not a
    position before it, so a reconnect before its first event gets no history_expired."""
    server = gateway(
        **FAST_EXPIRY, poll_min_seconds=60, poll_max_seconds=60, max_session_seconds=30
    )
    url = f"{server.url}/channels/idle/events"

    def delivered(events: list[MessageEvent]) -> bool:
        return any(e.type == "message" for e in events)

    old = await _channel_of(http, server.url, "idle", [1, 1, 1])
    # A session follows the channel while its events are live, then sits idle past
    # their retention: its feed knows that nothing came since.
    following = asyncio.create_task(read_session(http, url, stop=delivered))
    await asyncio.sleep(2.2)
    cut = await read_session(http, url, params={"rewind": "2"}, stop=lambda events: True)
    assert cut.events == []  # gone after the start's id
    resumed = asyncio.create_task(
        read_session(http, url, last_event_id=cut.last_event_id, stop=delivered)
    )
    await asyncio.sleep(0.3)
    new = await publish(http, server.url, "idle", {"data": "after"})  # a new epoch above
    sessions = await asyncio.wait_for(asyncio.gather(following, resumed), 10)
    assert [[(e.type, e.last_event_id) for e in s.events] for s in sessions] == [
        [("message", new[0])]
    ] * 2
    assert cut.last_event_id == old[-1]


async def test_a_multi_channel_rewind_counts_back_per_channel_and_a_cursor_ignores_it(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(max_session_seconds=0.5)
    a = await _channel_of(http, server.url, "a", [3, 1, 4])
    b = await _channel_of(http, server.url, "b", [2])
    url = f"{server.url}/events?channel=a&channel=b&channel=empty&rewind=4"
    first = await read_session(http, url)
    assert all(e.type == "message" for e in first.events)
    by_channel = {c: [e["id"] for e in _envelopes(first.events) if e["channel"] == c] for c in "ab"}
    assert by_channel == {"a": a[-4:], "b": b}
    later = await _channel_of(http, server.url, "b", [1])
    resumed = await read_session(http, url, last_event_id=first.last_event_id)
    assert [(e["channel"], e["id"]) for e in _envelopes(resumed.events)] == [("b", later[0])]
    # A channel the cursor does not hold is fresh: it alone rewinds.
    c = await _channel_of(http, server.url, "c", [1, 1])
    added = await read_session(
        http,
        f"{server.url}/events?channel=a&channel=b&channel=c&rewind=1",
        last_event_id=resumed.last_event_id,
    )
    assert [(e["channel"], e["id"]) for e in _envelopes(added.events)] == [("c", c[-1])]


def _reads(proxy: FaultProxy, channel: str) -> list[str]:
    """The session's Query requests for ``channel``, without the channel's name (the
    feed's polls, which look only past the head, are left out)."""
    bodies = []
    for body in _queried(proxy, channel):
        request = json.loads(body)
        request["ExpressionAttributeValues"][":c"] = {"S": "?"}
        bodies.append(json.dumps(request, sort_keys=True))
    return bodies


@pytest.mark.parametrize(("sizes", "rewind"), [([1] * 10, 3), ([4, 4, 4], 6), ([2, 5], 1)])
async def test_a_rewind_costs_the_queries_of_a_resume_from_where_it_starts(
    gateway: StartGateway,
    http: httpx.AsyncClient,
    fault_proxy: FaultProxy,
    sizes: list[int],
    rewind: int,
) -> None:
    # Polls far apart: each channel's feed polls once, as it starts.
    server = gateway(
        dynamodb_endpoint_url=fault_proxy.url,
        poll_min_seconds=30,
        poll_max_seconds=60,
        max_session_seconds=1,
    )
    rewound = await _channel_of(http, server.url, "rewound", sizes)
    resumed = await _channel_of(http, server.url, "resumed", sizes)
    start = len(resumed) - rewind - 1
    fault_proxy.traced.clear()
    one = await read_session(
        http, f"{server.url}/channels/rewound/events", params={"rewind": str(rewind)}
    )
    other = await read_session(
        http, f"{server.url}/channels/resumed/events", last_event_id=resumed[start]
    )
    assert [e.last_event_id for e in one.events] == rewound[-rewind:]
    assert [e.last_event_id for e in other.events] == resumed[-rewind:]
    assert sorted(_reads(fault_proxy, "rewound")) == sorted(_reads(fault_proxy, "resumed"))
    assert _reads(fault_proxy, "rewound")  # what is compared reached the store


@pytest.mark.parametrize("path", ["/channels/c/events", "/events?channel=c"])
@pytest.mark.parametrize("rewind", ["-1", "1001", "x", ""])
async def test_a_bad_rewind_is_refused_naming_it_before_any_store_call(
    gateway: StartGateway, http: httpx.AsyncClient, fault_proxy: FaultProxy, path: str, rewind: str
) -> None:
    server = gateway(dynamodb_endpoint_url=fault_proxy.url)
    response = await http.get(f"{server.url}{path}{'&' if '?' in path else '?'}rewind={rewind}")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_rewind" and "rewind" in error["message"]
    assert _queried(fault_proxy, "c") == []
