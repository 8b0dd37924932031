"""Sessions at the log's edges, over real HTTP: TTL deleting out of order, a log
that starts over, batches half visible to a reader, mixed epochs, a hung store."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gateway.cursor import parse_event_id
from gateway.items import Batch, StoredEvent, batch_item
from tests.eventstream import read_session
from tests.servers import FaultProxy, GatewayServer, publish
from tests.tables import delete_items, put_raw_items

StartGateway = Callable[..., GatewayServer]


@pytest.mark.parametrize("resume_from", [4, 3, 1])
async def test_ttl_deleting_the_newest_items_first_never_reuses_an_id(
    gateway: StartGateway, http: httpx.AsyncClient, resume_from: int
) -> None:
    # Expiry has whole-second granularity: with 2 s of retention, events are
    # expired 2.1 s later, and new ones live for at least another second.
    server = gateway(retention_seconds=2, max_session_seconds=3)
    old = [(await publish(http, server.url, "c", {"data": i}))[0] for i in range(1, 6)]
    await asyncio.sleep(2.1)
    await delete_items(server.settings, "c", [5, 4])  # TTL's order is any order
    other = gateway(retention_seconds=2)  # a process that never cached the head
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
    fresh = asyncio.create_task(read_session(http, url, stop=lambda events: len(events) == 1))
    await asyncio.sleep(0.5)
    (later,) = await publish(http, other.url, "c", {"data": "c"})
    session = await asyncio.wait_for(fresh, 10)
    assert [e.last_event_id for e in session.events] == [later]
    holding.cancel()
    await asyncio.gather(holding, return_exceptions=True)


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
    for last_event_id in (None, "0"):  # a fresh session, and one that must replay
        started = time.monotonic()
        session = await read_session(
            http, f"{server.url}/channels/c/events", last_event_id=last_event_id
        )
        # Correctness, not speed: the session's own deadline bounds every store call.
        assert time.monotonic() - started < 1.5 + 1.0
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
    server = gateway(retention_seconds=2, max_session_seconds=8)
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
