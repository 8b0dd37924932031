"""The metrics, read as Prometheus reads them: ``GET /metrics`` over real HTTP from a
real server, after a scripted scenario, with the counts checked exactly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.dynamodb import open_dynamodb
from gateway.errors import StoreMisconfigured
from gateway.metrics import RecordedMetrics
from gateway.settings import Settings
from gateway.store import EventLog
from infra.local import local_session
from tests.eventstream import read_session
from tests.servers import FaultProxy, GatewayServer
from tests.test_auth import GRANT, SECRET, mint

StartGateway = Callable[..., GatewayServer]
OpenLog = Callable[..., AbstractAsyncContextManager[EventLog]]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """A labelled counter's values, by that label's value."""
    return {
        dict(labels)[label]: number
        for (sample, labels), number in samples.items()
        if sample == name
    }


async def scrape(http: httpx.AsyncClient, server: GatewayServer) -> Samples:
    response = await http.get(f"{server.url}/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


async def scrape_until(
    http: httpx.AsyncClient, server: GatewayServer, done: Callable[[Samples], bool]
) -> Samples:
    """Sessions count their end as they close, just after the client saw it."""
    for _ in range(200):
        samples = await scrape(http, server)
        if done(samples):
            return samples
        await asyncio.sleep(0.05)
    return samples


ZERO_STORE_ERRORS = {
    "throttled": 0,
    "unavailable": 0,
    "conflict": 0,
    "misconfigured": 0,
    "unknown": 0,
}


async def test_metrics_count_publishes_and_store_calls_exactly(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(metrics=True)
    before = await scrape(http, server)
    # Every series exists from the start, at zero: an alarm sees 0, not no data.
    assert by_label(before, "sse_gateway_store_errors_total", "kind") == ZERO_STORE_ERRORS
    assert by_label(before, "sse_gateway_store_requests_total", "operation") == {
        "query": 0,
        "put": 0,
        "transact_write": 0,
    }
    assert value(before, "sse_gateway_events_published_total") == 0

    url = f"{server.url}/channels/%s/events"
    # One event: the log's end is read (a query), then one put.
    assert (await http.post(url % "a", json={"data": 1})).status_code == 201
    # Three events in one item: the end is cached, one transaction (with the check
    # that the item it follows is still there).
    batch = {"events": [{"data": 2}, {"data": 3}, {"data": 4}]}
    assert (await http.post(url % "a", json=batch)).status_code == 201
    # With an idempotency key: a query for the new channel's end, one transaction...
    keyed = {"Idempotency-Key": "k-1"}
    assert (await http.post(url % "b", json={"data": 5}, headers=keyed)).status_code == 201
    # ... and its repeat: one transaction that finds the key, storing nothing.
    replay = await http.post(url % "b", json={"data": 5}, headers=keyed)
    assert (replay.status_code, replay.headers["idempotent-replayed"]) == (201, "true")
    # Refused before any store call.
    assert (await http.post(url % "a", json={"nope": 1})).status_code == 400

    after = await scrape(http, server)
    assert value(after, "sse_gateway_events_published_total") == 5
    assert value(after, "sse_gateway_publish_seconds_count") == 3
    assert value(after, "sse_gateway_publish_seconds_bucket", le="+Inf") == 3
    assert value(after, "sse_gateway_publish_seconds_sum") > 0
    assert by_label(after, "sse_gateway_store_requests_total", "operation") == {
        "query": 2,
        "put": 1,
        "transact_write": 3,
    }
    assert by_label(after, "sse_gateway_store_errors_total", "kind") == ZERO_STORE_ERRORS
    assert value(after, "sse_gateway_feeds") == 0
    assert value(after, "sse_gateway_open_sessions") == 0
    # No channel name anywhere: labels have fixed, bounded values.
    assert all(
        dict(labels).keys() <= {"end", "reason", "operation", "kind", "le", "source", "outcome"}
        for _, labels in after
    )


async def test_metrics_count_throttled_store_calls(
    make_settings: Callable[..., Settings], fault_proxy: FaultProxy, http: httpx.AsyncClient
) -> None:
    # One attempt per call, so one throttling answer fails the publish.
    settings = make_settings(
        metrics=True, dynamodb_endpoint_url=fault_proxy.url, dynamodb_max_attempts=1
    )
    with GatewayServer(settings) as server:
        url = f"{server.url}/channels/t/events"
        assert (await http.post(url, json={"data": 1})).status_code == 201
        fault_proxy.throttle("transactwriteitems", 1)  # a write after the first: checked
        assert (await http.post(url, json={"data": 2})).status_code == 503
        # The failed write's outcome is unknown: the end is read again.
        assert (await http.post(url, json={"data": 3})).status_code == 201
        samples = await scrape(http, server)
    assert by_label(samples, "sse_gateway_store_errors_total", "kind") == {
        **ZERO_STORE_ERRORS,
        "throttled": 1,
    }
    assert by_label(samples, "sse_gateway_store_requests_total", "operation") == {
        "query": 2,
        "put": 1,
        "transact_write": 2,
    }
    assert value(samples, "sse_gateway_events_published_total") == 2


async def test_metrics_count_a_missing_table_as_misconfigured(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()  # a table nobody created
    metrics = RecordedMetrics()
    async with open_dynamodb(settings, local_session()) as client:
        store = EventLog.for_settings(client, settings, metrics=metrics)
        with pytest.raises(StoreMisconfigured):
            await store.last_batch("c")
    samples = parse(metrics.exposition().decode())
    assert value(samples, "sse_gateway_store_requests_total", operation="query") == 1
    assert by_label(samples, "sse_gateway_store_errors_total", "kind") == {
        **ZERO_STORE_ERRORS,
        "misconfigured": 1,
    }


async def test_metrics_follow_sessions_feeds_deliveries_and_resets(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(metrics=True, max_session_seconds=1.5, session_jitter=0)
    url = f"{server.url}/channels/%s/events"

    # A session that gets two events, then ends at its deadline.
    reading = asyncio.create_task(read_session(http, url % "live"))
    during = await scrape_until(http, server, lambda s: value(s, "sse_gateway_feeds") == 1)
    assert value(during, "sse_gateway_feeds") == 1
    assert (await http.post(url % "live", json={"events": [{"data": 1}, {"data": 2}]})).is_success
    session = await reading
    assert len(session.events) == 2

    # A position that is none of ours: a reset, then the session ends too.
    await read_session(http, url % "live", last_event_id="garbage")

    def ended(samples: Samples) -> bool:
        ends = by_label(samples, "sse_gateway_sessions_total", "end")
        return sum(ends.values()) >= 2 and value(samples, "sse_gateway_feeds") == 0

    after = await scrape_until(http, server, ended)
    assert value(after, "sse_gateway_feeds") == 0
    # Needs the session wiring (gateway/session.py, gateway/multiplex.py):
    assert value(during, "sse_gateway_open_sessions") == 1
    assert value(after, "sse_gateway_open_sessions") == 0
    assert by_label(after, "sse_gateway_sessions_total", "end") == {
        "deadline": 2,
        "idle": 0,
        "token_expired": 0,
        "store_error": 0,
        "restart": 0,
        "shutdown": 0,
        "limit": 0,
        "disconnect": 0,
    }
    assert value(after, "sse_gateway_events_delivered_total") == 2
    assert value(after, "sse_gateway_delivery_lag_seconds_count") == 2
    assert by_label(after, "sse_gateway_resets_total", "reason") == {
        "invalid_last_event_id": 1,
        "channel_restarted": 0,
        "unknown_position": 0,
        "history_expired": 0,
    }


async def test_metrics_count_idle_and_disconnected_sessions(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(metrics=True, max_session_seconds=30, idle_session_seconds=0.5)
    url = f"{server.url}/channels/%s/events"
    idle = await read_session(http, url % "quiet")
    assert idle.events == []
    # A client that leaves at the first chunk (the head id).
    await read_session(http, url % "left", stop=lambda events: True)

    def ended(samples: Samples) -> bool:
        return sum(by_label(samples, "sse_gateway_sessions_total", "end").values()) >= 2

    samples = await scrape_until(http, server, ended)
    # Needs the session wiring (gateway/session.py):
    ends = by_label(samples, "sse_gateway_sessions_total", "end")
    assert (ends["idle"], ends["disconnect"], sum(ends.values())) == (1, 1, 2)
    assert value(samples, "sse_gateway_open_sessions") == 0


async def _following(server: GatewayServer, channel: str) -> None:
    """Until ``server`` runs ``channel``'s feed: a session there has subscribed."""
    for _ in range(400):
        if channel in server.hub.feeds:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no feed for {channel} in 20 s")


async def test_metrics_count_token_expiry_limit_and_shutdown_ends(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(
        metrics=True,
        max_session_seconds=30,
        max_feeds=1,
        auth_secret=SECRET,
        auth_leeway_seconds=0,
        session_jitter=0,
    )
    url = f"{server.url}/channels/%s/events?token={mint({**GRANT, 'exp': int(time.time()) + 2})}"
    held = asyncio.create_task(read_session(http, url % "orders:1"))
    await _following(server, "orders:1")  # its feed takes the one place
    refused = await read_session(http, url % "orders:2")  # a second feed: over the limit
    assert refused.status == 200
    await held  # ends at the token's expiry
    samples = await scrape_until(
        http, server, lambda s: sum(by_label(s, "sse_gateway_sessions_total", "end").values()) >= 2
    )
    ends = by_label(samples, "sse_gateway_sessions_total", "end")
    assert (ends["limit"], ends["token_expired"], sum(ends.values())) == (1, 1, 2)
    token = mint(GRANT)
    shutting = asyncio.create_task(
        read_session(http, f"{server.url}/channels/orders:3/events?token={token}")
    )
    await _following(server, "orders:3")
    assert server._loop is not None
    server._loop.call_soon_threadsafe(server.hub.close)  # as uvicorn's shutdown does
    assert (await shutting).retry == 50
    samples = await scrape(http, server)
    assert by_label(samples, "sse_gateway_sessions_total", "end")["shutdown"] == 1


async def test_metrics_are_served_only_when_on(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    off = gateway()
    response = await http.get(f"{off.url}/metrics")
    assert response.status_code == 404


async def test_metrics_on_needs_a_recorder_the_store_shares(
    make_settings: Callable[..., Settings], open_log: OpenLog
) -> None:
    async with open_log() as store:
        with pytest.raises(ValueError, match="SSE_GATEWAY_METRICS"):
            create_app(make_settings(metrics=True), store)


def test_delivery_lag_runs_from_the_append_time_to_the_write() -> None:
    metrics = RecordedMetrics(clock=lambda: 1_000.0)
    # 0.5 s and 2 s late; a writer whose clock ran ahead counts as no lag.
    metrics.delivered([999.5, 998.0, 1_000.5])
    metrics.delivered([])
    samples = parse(metrics.exposition().decode())
    assert value(samples, "sse_gateway_events_delivered_total") == 3
    assert value(samples, "sse_gateway_delivery_lag_seconds_sum") == 2.5
    assert value(samples, "sse_gateway_delivery_lag_seconds_bucket", le="0.01") == 1
    assert value(samples, "sse_gateway_delivery_lag_seconds_bucket", le="0.5") == 2
    assert value(samples, "sse_gateway_delivery_lag_seconds_bucket", le="1.0") == 2
    assert value(samples, "sse_gateway_delivery_lag_seconds_bucket", le="2.5") == 3


def test_label_values_outside_the_fixed_sets_are_refused() -> None:
    metrics = RecordedMetrics()
    for report, unknown in [
        (metrics.session_ended, "orders:42"),
        (metrics.reset, "orders:42"),
        (metrics.store_request, "scan"),
        (metrics.store_error, "oops"),
        (metrics.notification, "orders:42"),
    ]:
        with pytest.raises(KeyError):
            report(unknown)
    with pytest.raises(KeyError):
        metrics.fed("orders:42", 1)


def test_every_label_value_is_a_series_from_the_start() -> None:
    samples = parse(RecordedMetrics().exposition().decode())
    for source in ("notification", "poll", "in_process"):
        assert value(samples, "sse_gateway_feed_events_total", source=source) == 0
    for outcome in ("sent", "send_failed", "received", "fell_back"):
        assert value(samples, "sse_gateway_notifications_total", outcome=outcome) == 0
    assert value(samples, "sse_gateway_safety_polls_total") == 0
    assert value(samples, "sse_gateway_notifier_connected") == 0
