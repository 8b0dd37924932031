"""Faults injected for real: a SIGKILLed server process, DynamoDB refusing
connections or throttling (through a TCP proxy), a client that stops reading.
Whatever happens, no acknowledged event is lost, repeated or reordered."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable

import httpx

from tests.eventstream import EventSourceClient, MessageEvent, read_session, seq_of
from tests.servers import FaultProxy, GatewayProcess, GatewayServer

StartGateway = Callable[..., GatewayServer]
StartProcess = Callable[..., GatewayProcess]


class Publisher:
    """Publishes ``{"n": n}`` until stopped, keeping what was acknowledged;
    a refused or cut request (the server is down) is not acknowledged."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.acked: dict[str, int] = {}
        self.rejected: list[httpx.Response] = []
        self.network_errors = 0
        self._client = client
        self._url = url
        self._stopping = asyncio.Event()

    async def run(self, pause: float = 0.03) -> None:
        n = 0
        while not self._stopping.is_set():
            try:
                response = await self._client.post(self._url, json={"data": {"n": n}})
            except httpx.TransportError:
                self.network_errors += 1
            else:
                if response.status_code == 201:
                    (event_id,) = response.json()["ids"]
                    self.acked[event_id] = n
                else:
                    self.rejected.append(response)
            n += 1
            await asyncio.sleep(pause)

    def stop(self) -> None:
        self._stopping.set()

    @property
    def last_acked(self) -> str:
        return max(self.acked, key=seq_of)


def _until_seen(publisher: Publisher, done: asyncio.Event) -> Callable[[list[MessageEvent]], bool]:
    return lambda events: (
        done.is_set() and bool(events) and events[-1].last_event_id == publisher.last_acked
    )


async def test_server_sigkilled_mid_stream_clients_resume_without_loss_or_duplicates(
    gateway_process: StartProcess, http: httpx.AsyncClient
) -> None:
    server = gateway_process(max_session_seconds=3, heartbeat_seconds=0.3, retry_ms=100)
    url = f"{server.url}/channels/killed/events"
    publisher = Publisher(http, url)
    published = asyncio.Event()
    subscribers = [EventSourceClient(http, url) for _ in range(3)]
    following = [
        asyncio.create_task(s.run(_until_seen(publisher, published), max_connections=1000))
        for s in subscribers
    ]
    await asyncio.sleep(0.5)
    publishing = asyncio.create_task(publisher.run())
    await asyncio.sleep(1.5)
    server.kill()
    await asyncio.sleep(0.5)
    await asyncio.to_thread(server.start)
    await asyncio.sleep(1.5)
    publisher.stop()
    await publishing
    published.set()
    await asyncio.wait_for(asyncio.gather(*following), 60)

    # The log as a new client reads it from the start: gapless, holding every ack.
    log = await read_session(
        http,
        url,
        last_event_id="0",
        stop=lambda events: bool(events) and events[-1].last_event_id == publisher.last_acked,
    )
    logged = [(e.last_event_id, json.loads(e.data)["n"]) for e in log.events]
    assert [seq_of(event_id) for event_id, _ in logged] == list(range(1, len(logged) + 1))
    assert set(publisher.acked.items()) <= set(logged)
    assert publisher.network_errors >= 1  # the kill did interrupt publishing
    for subscriber in subscribers:
        assert subscriber.network_errors >= 1  # cut mid-stream, then refused until restart
        received = [(e.last_event_id, json.loads(e.data)["n"]) for e in subscriber.events]
        assert received == logged


async def test_dynamodb_outage_ends_sessions_with_retry_and_loses_no_acked_event(
    gateway: StartGateway, http: httpx.AsyncClient, fault_proxy: FaultProxy
) -> None:
    server = gateway(
        dynamodb_endpoint_url=fault_proxy.url,
        dynamodb_max_attempts=1,
        dynamodb_timeout_seconds=1,
        max_session_seconds=30,
        heartbeat_seconds=0.3,
    )
    url = f"{server.url}/channels/outage/events"
    publisher = Publisher(http, url)
    published = asyncio.Event()
    subscriber = EventSourceClient(http, url)
    following = asyncio.create_task(
        subscriber.run(_until_seen(publisher, published), max_connections=1000)
    )
    open_session = asyncio.create_task(read_session(http, url))
    publishing = asyncio.create_task(publisher.run())
    await asyncio.sleep(1)

    fault_proxy.refuse = True
    session = await asyncio.wait_for(open_session, 10)
    assert (session.status, session.retry) == (200, 50)  # ended cleanly, told to come back
    during = await read_session(http, url)
    assert (during.status, during.events, during.retry) == (200, [], 50)
    await asyncio.sleep(1)
    fault_proxy.refuse = False
    await asyncio.sleep(1)
    publisher.stop()
    await publishing
    published.set()
    events = await asyncio.wait_for(following, 30)

    assert publisher.rejected, "no publish fell in the outage"
    for response in publisher.rejected:
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        error = response.json()["error"]
        assert error["code"] == "store_unavailable"
        assert "try again" in error["message"]
    # The refused publishes never reached DynamoDB: the log is exactly the acknowledged.
    assert [e.last_event_id for e in events] == sorted(publisher.acked, key=seq_of)
    assert [seq_of(e.last_event_id) for e in events] == list(range(1, len(events) + 1))
    assert [json.loads(e.data)["n"] for e in events] == [
        publisher.acked[e.last_event_id] for e in events
    ]
    assert subscriber.network_errors == 0  # never a failed connection, only clean ends


async def test_throttled_writes_are_retried_then_reported_as_503_writing_nothing(
    gateway: StartGateway, http: httpx.AsyncClient, fault_proxy: FaultProxy
) -> None:
    server = gateway(dynamodb_endpoint_url=fault_proxy.url, dynamodb_max_attempts=3)
    url = f"{server.url}/channels/throttled/events"

    fault_proxy.throttle("putitem", 2)
    retried = await http.post(url, json={"data": "kept"})
    assert retried.status_code == 201
    assert fault_proxy.seen.count("putitem") == 3  # two throttled, the third written

    fault_proxy.throttle("transactwriteitems", 3)  # every later write is a transaction
    refused = await http.post(url, json={"data": "refused"})
    assert refused.status_code == 503
    assert "ProvisionedThroughputExceededException" in refused.json()["error"]["message"]

    after = await http.post(url, json={"data": "next"})
    assert [seq_of(i) for i in retried.json()["ids"] + after.json()["ids"]] == [1, 2]
    replay = await read_session(http, url, last_event_id="0", stop=lambda events: len(events) == 2)
    assert [e.data for e in replay.events] == ['"kept"', '"next"']


async def test_client_that_stops_reading_is_not_buffered_without_bound(
    gateway_process: StartProcess, http: httpx.AsyncClient
) -> None:
    server = gateway_process(max_session_seconds=120, heartbeat_seconds=60, feed_buffer_events=50)
    url = f"{server.url}/channels/slow/events"
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16_384)
    stalled.connect(("127.0.0.1", server.port))
    stalled.sendall(
        b"GET /channels/slow/events HTTP/1.1\r\nHost: test\r\nLast-Event-ID: 0\r\n\r\n"
    )  # and never reads
    healthy = EventSourceClient(http, url)
    rounds, batches, batch_size, payload = 3, 25, 10, "x" * 32_000
    total = rounds * batches * batch_size
    following = asyncio.create_task(healthy.run(lambda events: len(events) == total))
    await asyncio.sleep(0.5)

    rss_after_round = []
    for round_ in range(rounds):
        for batch in range(batches):
            events = [{"data": f"{round_}-{batch}-{i}-{payload}"} for i in range(batch_size)]
            response = await http.post(url, json={"events": events})
            assert response.status_code == 201, response.text
        rss_after_round.append(server.rss_bytes())
    received = await asyncio.wait_for(following, 60)
    stalled.close()

    assert len(received) == total  # the stalled client held no one else back
    # Past the first round (allocator warm-up, the feed's buffer filling), memory stays
    # flat; a server that queued the stalled client's stream would grow by what it missed.
    missed = (rounds - 1) * batches * batch_size * len(payload)
    growth = rss_after_round[-1] - rss_after_round[0]
    assert growth < missed / 2, f"RSS grew {growth} bytes while {missed} bytes went unread"
