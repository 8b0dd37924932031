"""Cross-process wake-ups over a real redis-server: notifications deliver without a
query, and whatever Redis does (dies, loses, repeats or reorders messages, is not
there at all) every acknowledged event reaches every subscriber exactly once, in
order, or a ``reset`` says where it was lost."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from gateway import notify
from gateway.dynamodb import open_dynamodb
from gateway.notification import encode, pubsub_channel
from gateway.publisher import open_publisher
from gateway.settings import Settings
from infra.local import local_session
from infra.table import ensure_table
from tests.eventstream import EventSourceClient, MessageEvent, read_session
from tests.servers import (
    GatewayProcess,
    GatewayServer,
    RedisServer,
    create_cluster,
    free_port,
    publish,
)
from tests.tables import FAST_EXPIRY, delete_items

StartGateway = Callable[..., GatewayServer]
FED_BY_NOTIFICATION = 'sse_gateway_feed_events_total{source="notification"}'
StartRedis = Callable[..., RedisServer]


def notified_settings(redis: RedisServer | str, **overrides: Any) -> dict[str, Any]:
    url = redis if isinstance(redis, str) else redis.url
    return {
        "notify_url": url,
        "metrics": True,
        "notified_poll_seconds": 30.0,
        "max_session_seconds": 30.0,
        **overrides,
    }


async def wait_until(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.02)


async def settled(read: Callable[[], int], quiet: float = 0.5) -> int:
    """``read()`` once it has not changed for ``quiet`` seconds (a read in flight ended)."""
    value = read()
    while True:
        await asyncio.sleep(quiet)
        if (latest := read()) == value:
            return value
        value = latest


async def subscribers(redis: Redis, name: str) -> bool:
    ((_, count),) = await redis.pubsub_numsub(name)
    return bool(count)


async def wait_for_async(condition: Callable[[], Awaitable[bool]], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.05)


def is_notified(server: GatewayServer, channel: str) -> bool:
    """The channel's feed runs on the notifier's confirmed subscription."""
    feed = server.hub.feeds.get(channel)
    return feed is not None and feed.head_interval == server.settings.notified_poll_seconds


def sample(server: GatewayServer, name: str, **labels: str) -> float:
    value = server.app.state.metrics.registry.get_sample_value(name, labels)
    return float(value or 0.0)


def messages(events: list[MessageEvent]) -> list[str]:
    return [e.last_event_id for e in events if e.type == "message"]


async def test_another_process_delivers_a_notifications_events_without_a_query(
    gateway: StartGateway, redis_server: StartRedis, http: httpx.AsyncClient
) -> None:
    redis = redis_server()
    writer, reader = gateway(**notified_settings(redis)), gateway(**notified_settings(redis))
    url = f"{reader.url}/channels/c/events"
    reading = asyncio.create_task(read_session(http, url, stop=lambda ev: len(ev) == 11))
    await wait_until(lambda: is_notified(reader, "c"))
    store = reader.store
    assert store is not None
    before = await settled(lambda: store.stats.queries, quiet=1.0)  # the catch-up read
    ids = [(await publish(http, writer.url, "c", {"data": i}))[0] for i in range(10)]
    await wait_until(
        lambda: sample(reader, "sse_gateway_feed_events_total", source="notification") == 10
    )
    assert store.stats.queries == before  # no tail query: the notifications carried them
    # A publish through the reader itself: handed over in-process, its own
    # notification (which it also receives) ignored.
    ids += await publish(http, reader.url, "c", {"data": 10})
    session = await asyncio.wait_for(reading, 30)
    assert messages(session.events) == ids
    assert sample(reader, "sse_gateway_feed_events_total", source="in_process") == 1
    assert sample(reader, "sse_gateway_notifications_total", outcome="received") == 10
    assert sample(reader, "sse_gateway_notifications_total", outcome="fell_back") == 0
    assert sample(writer, "sse_gateway_notifications_total", outcome="sent") == 10
    assert sample(reader, "sse_gateway_notifier_connected") == 1


async def test_an_idle_notified_channel_polls_once_per_safety_interval(
    gateway: StartGateway, redis_server: StartRedis, http: httpx.AsyncClient
) -> None:
    interval = 1.0
    reader = gateway(**notified_settings(redis_server(), notified_poll_seconds=interval))
    url = f"{reader.url}/channels/c/events"
    holding = asyncio.create_task(read_session(http, url, stop=lambda ev: False))
    await wait_until(lambda: is_notified(reader, "c"))
    store = reader.store
    assert store is not None
    before, started = await settled(lambda: store.stats.queries), time.monotonic()
    await asyncio.sleep(4 * interval)
    queries, elapsed = store.stats.queries - before, time.monotonic() - started
    # Adaptive polling would make one every poll_max_seconds (0.2 s): ~20 here.
    assert queries <= elapsed / interval + 1, queries
    assert sample(reader, "sse_gateway_safety_polls_total") >= 1
    holding.cancel()
    await asyncio.gather(holding, return_exceptions=True)


async def test_redis_killed_mid_stream_and_restarted(
    gateway: StartGateway, redis_server: StartRedis, http: httpx.AsyncClient
) -> None:
    redis = redis_server()
    settings = notified_settings(redis, notified_poll_seconds=2.0, max_session_seconds=3.0)
    writer, reader = gateway(**settings), gateway(**settings)
    client = EventSourceClient(http, f"{reader.url}/channels/c/events", retry_ms=50)
    ids: list[str] = []
    consuming = asyncio.create_task(client.run(lambda ev: len(messages(ev)) == 30))
    await wait_until(lambda: is_notified(reader, "c"))
    for i in range(10):
        ids += await publish(http, writer.url, "c", {"data": i})
        await asyncio.sleep(0.05)
    redis.kill()
    await wait_until(lambda: not reader.app.state.notifier.connected)
    for i in range(10, 20):  # stored and acknowledged, whatever Redis does
        ids += await publish(http, writer.url, "c", {"data": i})
        await asyncio.sleep(0.05)
    assert not is_notified(reader, "c")  # back to adaptive polling
    redis_server(port=redis.port)
    await wait_until(lambda: is_notified(reader, "c"))  # resubscribed
    by_notification = sample(reader, "sse_gateway_feed_events_total", source="notification")
    await asyncio.sleep(notify._SEND_PAUSE_SECONDS)  # the writer sends again
    for i in range(20, 30):
        ids += await publish(http, writer.url, "c", {"data": i})
        await asyncio.sleep(0.05)
    events = await asyncio.wait_for(consuming, 60)
    assert [e.type for e in events] == ["message"] * 30
    assert messages(events) == ids
    assert sample(writer, "sse_gateway_notifications_total", outcome="send_failed") >= 1
    assert sample(reader, "sse_gateway_feed_events_total", source="notification") > by_notification


async def test_the_python_api_notifies_too(
    gateway: StartGateway, redis_server: StartRedis, http: httpx.AsyncClient
) -> None:
    redis = redis_server()
    reader = gateway(**notified_settings(redis))
    url = f"{reader.url}/channels/jobs:7/events"
    reading = asyncio.create_task(read_session(http, url, stop=lambda ev: len(ev) == 2))
    await wait_until(lambda: is_notified(reader, "jobs:7"))
    async with open_publisher(reader.settings, local_session()) as publisher:
        ids = [await publisher.publish("jobs:7", {"progress": p}) for p in (10, 50)]
    session = await asyncio.wait_for(reading, 30)
    assert messages(session.events) == ids
    assert sample(reader, "sse_gateway_feed_events_total", source="notification") == 2


@pytest.mark.parametrize("writer_notifies", ["nowhere", "elsewhere"])
async def test_a_lost_notification_is_made_up_for_by_the_safety_poll(
    gateway: StartGateway,
    redis_server: StartRedis,
    http: httpx.AsyncClient,
    writer_notifies: str,
) -> None:
    redis = redis_server()
    reader = gateway(**notified_settings(redis, notified_poll_seconds=1.0))
    # A writer without the notifier, or one whose Redis no reader subscribes to.
    other = {"nowhere": {}, "elsewhere": {"notify_url": redis_server().url}}[writer_notifies]
    writer = gateway(**other)
    url = f"{reader.url}/channels/c/events"
    reading = asyncio.create_task(read_session(http, url, stop=lambda ev: len(ev) == 3))
    await wait_until(lambda: is_notified(reader, "c"))
    ids = [(await publish(http, writer.url, "c", {"data": i}))[0] for i in range(3)]
    session = await asyncio.wait_for(reading, 30)
    assert messages(session.events) == ids
    assert sample(reader, "sse_gateway_feed_events_total", source="poll") == 3
    assert sample(reader, "sse_gateway_safety_polls_total") >= 1


async def test_duplicated_and_reordered_notifications_deliver_each_event_once_in_order(
    gateway: StartGateway, redis_server: StartRedis, http: httpx.AsyncClient
) -> None:
    redis = redis_server()
    reader = gateway(**notified_settings(redis, heartbeat_seconds=0.1))
    writer = gateway()  # stores without notifying: the test sends the notifications

    def received() -> float:
        return sample(reader, "sse_gateway_notifications_total", outcome="received")

    url = f"{reader.url}/channels/c/events"
    # Held (heartbeats show it) until the reader has received every notification.
    reading = asyncio.create_task(
        read_session(http, url, stop=lambda ev: len(ev) >= 4 and received() == 8)
    )
    await wait_until(lambda: is_notified(reader, "c"))
    ids = [(await publish(http, writer.url, "c", {"data": i}))[0] for i in range(4)]
    store = reader.store
    assert store is not None
    page = reader.call(lambda: store.read_after("c", 0))
    e1, e2, e3, e4 = page.events
    name = pubsub_channel(reader.settings.table_name, "c")
    async with Redis.from_url(redis.url) as forger:
        for sent in ([e1], [e1], [e3], [e2], [e3, e4], [e2, e3], [e4], [e1, e2]):
            await forger.publish(name, encode("another-process", sent))
            await asyncio.sleep(0.02)
    session = await asyncio.wait_for(reading, 30)
    assert messages(session.events) == ids
    assert sample(reader, "sse_gateway_notifications_total", outcome="fell_back") >= 4


async def test_a_notifier_with_nothing_listening_at_start_polls_until_redis_comes(
    gateway: StartGateway,
    redis_server: StartRedis,
    http: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    settings = notified_settings(f"redis://:s3cret-pass@127.0.0.1:{port}")
    writer, reader = gateway(**settings), gateway(**settings)
    client = EventSourceClient(http, f"{reader.url}/channels/c/events", retry_ms=50)
    consuming = asyncio.create_task(client.run(lambda ev: len(messages(ev)) == 6))
    await wait_until(lambda: "c" in reader.hub.feeds)  # the session started: it sees what follows
    with caplog.at_level(logging.INFO, logger="gateway.notify"):
        ids = [(await publish(http, writer.url, "c", {"data": i}))[0] for i in range(3)]
        await wait_until(lambda: len(messages(client.events)) == 3)  # by adaptive polling
        assert not reader.app.state.notifier.connected
        assert sample(writer, "sse_gateway_notifications_total", outcome="send_failed") >= 1
        redis_server(port=port, password="s3cret-pass")
        await wait_until(lambda: is_notified(reader, "c"))
        await asyncio.sleep(notify._SEND_PAUSE_SECONDS)
        ids += [(await publish(http, writer.url, "c", {"data": i}))[0] for i in range(3, 6)]
        events = await asyncio.wait_for(consuming, 30)
    assert messages(events) == ids
    assert sample(reader, "sse_gateway_feed_events_total", source="notification") >= 1
    assert "notifier: no connection to redis://127.0.0.1" in caplog.text
    assert "s3cret-pass" not in caplog.text


async def test_a_purge_while_notifications_flow_ends_in_a_reset_then_the_new_log(
    gateway: StartGateway, redis_server: StartRedis, http: httpx.AsyncClient
) -> None:
    redis = redis_server()
    writer, reader = gateway(**notified_settings(redis)), gateway(**notified_settings(redis))
    client = EventSourceClient(http, f"{reader.url}/channels/c/events", retry_ms=50)
    consuming = asyncio.create_task(
        client.run(lambda ev: len(messages(ev)) == 5 and ev[-1].type == "message")
    )
    await wait_until(lambda: is_notified(reader, "c"))
    old = [(await publish(http, writer.url, "c", {"data": i}))[0] for i in range(3)]
    await wait_until(lambda: messages(client.events) == old)
    await delete_items(writer.settings, "c", [1, 2, 3])  # the channel is purged
    restarter = gateway(**notified_settings(redis))  # a process that never cached the head
    new = await publish(http, restarter.url, "c", {"events": [{"data": "a"}, {"data": "b"}]})
    events = await asyncio.wait_for(consuming, 60)
    # The new log's events, after a reset that says the old position is gone.
    assert messages(events) == old + new
    assert [e.type for e in events] == ["message"] * 3 + ["reset"] + ["message"] * 2


async def test_ttl_expiry_while_notifications_flow_continues_in_a_new_epoch(
    gateway: StartGateway, redis_server: StartRedis, http: httpx.AsyncClient
) -> None:
    redis = redis_server()
    settings = notified_settings(redis, **FAST_EXPIRY)
    writer, reader = gateway(**settings), gateway(**settings)
    client = EventSourceClient(http, f"{reader.url}/channels/c/events", retry_ms=50)
    consuming = asyncio.create_task(client.run(lambda ev: len(messages(ev)) == 4))
    await wait_until(lambda: is_notified(reader, "c"))
    ids = [(await publish(http, writer.url, "c", {"data": i}))[0] for i in range(2)]
    await asyncio.sleep(2.1)  # both expired: the next append opens an epoch above them
    ids += await publish(http, writer.url, "c", {"events": [{"data": 2}, {"data": 3}]})
    assert ids[2].split("-")[0] != ids[0].split("-")[0]
    events = await asyncio.wait_for(consuming, 30)
    assert [e.type for e in events] == ["message"] * 4
    assert messages(events) == ids
    assert sample(reader, "sse_gateway_notifications_total", outcome="fell_back") >= 1


async def test_ttl_deleting_the_newest_items_while_notifications_flow_ends_in_a_reset(
    gateway: StartGateway, redis_server: StartRedis, http: httpx.AsyncClient
) -> None:
    redis = redis_server()
    settings = notified_settings(redis, **FAST_EXPIRY)
    writer, reader = gateway(**settings), gateway(**settings)
    client = EventSourceClient(http, f"{reader.url}/channels/c/events", retry_ms=50)
    consuming = asyncio.create_task(
        client.run(lambda ev: len(messages(ev)) == 4 and ev[-1].type == "message")
    )
    await wait_until(lambda: is_notified(reader, "c"))
    old = [(await publish(http, writer.url, "c", {"data": i}))[0] for i in range(3)]
    await wait_until(lambda: messages(client.events) == old)
    await asyncio.sleep(2.1)  # expired; TTL deletes the newest first (any order is TTL's)
    await delete_items(writer.settings, "c", [3, 2])
    restarter = gateway(**settings)  # a process that never cached the head
    new = await publish(http, restarter.url, "c", {"data": "a"})
    events = await asyncio.wait_for(consuming, 60)
    # seq 2 and 3 went unseen by the new epoch's writer: a reset, then the new log.
    assert messages(events) == old + new
    assert [e.type for e in events] == ["message"] * 3 + ["reset"] + ["message"]


async def test_two_serve_processes_on_one_store_with_a_redis_between(
    dynamodb_endpoint: str,
    make_settings: Callable[..., Settings],
    redis_server: StartRedis,
    http: httpx.AsyncClient,
) -> None:
    redis = redis_server(password="local-redis-pass")
    settings = make_settings()
    async with open_dynamodb(settings, local_session()) as dynamodb:
        await ensure_table(dynamodb, settings.table_name)
    env = {
        "SSE_GATEWAY_TABLE_NAME": settings.table_name,
        "SSE_GATEWAY_NOTIFY_URL": redis.url,
        "SSE_GATEWAY_METRICS": "true",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    one = GatewayProcess(dynamodb_endpoint, env, command="serve").start()
    two = GatewayProcess(dynamodb_endpoint, env, command="serve").start()
    try:
        url = f"{two.url}/channels/c/events"
        reading = asyncio.create_task(read_session(http, url, stop=lambda ev: len(ev) == 5))

        # Redis itself says when the second process's feed has subscribed.
        name = pubsub_channel(settings.table_name, "c")
        async with Redis.from_url(redis.url) as probe:
            await wait_for_async(lambda: subscribers(probe, name), 30)
        await asyncio.sleep(0.5)  # the feed's catch-up read after its subscription
        ids = []
        for i in range(5):
            ids += await publish(http, one.url, "c", {"data": i})
            await asyncio.sleep(0.2)
        session = await asyncio.wait_for(reading, 30)
        assert messages(session.events) == ids
        text = (await http.get(f"{two.url}/metrics")).text
        (line,) = [row for row in text.splitlines() if row.startswith(FED_BY_NOTIFICATION)]
        assert float(line.split()[-1]) >= 3, text
    finally:
        one.kill()
        two.kill()


async def test_a_cluster_carries_notifications_between_processes_on_different_nodes(
    gateway: StartGateway, redis_server: StartRedis, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    # A plain client and plain PUBLISH/SUBSCRIBE: a cluster forwards every PUBLISH to
    # every node, so the writer and the reader may be connected to any two of them.
    nodes = [redis_server(cluster_dir=tmp_path) for _ in range(3)]
    await asyncio.to_thread(create_cluster, nodes)
    writer = gateway(**notified_settings(nodes[0]))
    reader = gateway(**notified_settings(nodes[2]))
    url = f"{reader.url}/channels/c/events"
    reading = asyncio.create_task(read_session(http, url, stop=lambda ev: len(ev) == 5))
    await wait_until(lambda: is_notified(reader, "c"))
    ids = [(await publish(http, writer.url, "c", {"data": i}))[0] for i in range(5)]
    session = await asyncio.wait_for(reading, 30)
    assert messages(session.events) == ids
    assert sample(reader, "sse_gateway_feed_events_total", source="notification") == 5
