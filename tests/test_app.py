"""The HTTP API and session engine through a real uvicorn server over real HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings

from gateway.composite import MAX_CURSOR_CHARS, channel_tag
from gateway.cursor import parse_event_id
from gateway.errors import InvalidInput
from gateway.validation import events_from_body, parse_json_body
from tests.eventstream import read_session
from tests.servers import FaultProxy, GatewayServer, gauges
from tests.strategies import bodies
from tests.tables import FAST_EXPIRY

StartGateway = Callable[..., GatewayServer]


async def _publish(
    http: httpx.AsyncClient, server: GatewayServer, channel: str, body: Any
) -> list[str]:
    response = await http.post(f"{server.url}/channels/{channel}/events", json=body)
    assert response.status_code == 201, response.text
    ids: list[str] = response.json()["ids"]
    return ids


async def test_healthz_answers_ok(gateway: StartGateway, http: httpx.AsyncClient) -> None:
    server = gateway()
    response = await http.get(f"{server.url}/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_unknown_route_answers_json_error(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway()
    response = await http.get(f"{server.url}/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    response = await http.delete(f"{server.url}/channels/c/events")
    assert response.json()["error"]["code"] == "method_not_allowed"


async def test_publish_returns_consecutive_ids(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway()
    (first,) = await _publish(http, server, "orders:1", {"data": {"n": 1}})
    batch = await _publish(
        http, server, "orders:1", {"events": [{"data": 2}, {"event": "note", "data": "x\ny"}]}
    )
    positions = [parse_event_id(i) for i in [first, *batch]]
    assert [p.seq for p in positions if p] == [1, 2, 3]
    session = await read_session(
        http,
        f"{server.url}/channels/orders:1/events",
        last_event_id="0",
        stop=lambda events: len(events) == 3,
    )
    assert [(e.type, json.loads(e.data), e.last_event_id) for e in session.events] == [
        ("message", {"n": 1}, first),
        ("message", 2, batch[0]),
        ("note", "x\ny", batch[1]),
    ]


@pytest.mark.parametrize(
    ("channel", "headers", "body", "status", "code"),
    [
        ("bad channel", {}, b'{"data": 1}', 400, "invalid_channel"),
        ("a%0Ab", {}, b'{"data": 1}', 400, "invalid_channel"),
        ("a%0Db", {}, b'{"data": 1}', 400, "invalid_channel"),
        ("a%00b", {}, b'{"data": 1}', 400, "invalid_channel"),
        ("a%E2%80%A8b", {}, b'{"data": 1}', 400, "invalid_channel"),
        ("c" * 129, {}, b'{"data": 1}', 400, "invalid_channel"),
        ("c", {"content-type": "text/plain"}, b'{"data": 1}', 415, "unsupported_media_type"),
        ("c", {}, b'{"data": ', 400, "invalid_json"),
        ("c", {}, b'{"data": NaN}', 400, "invalid_json"),
        ("c", {}, b'{"data": "\\ud800"}', 400, "invalid_event"),
        ("c", {}, b'{"data": {"\\udfff": 1}}', 400, "invalid_event"),
        ("c", {}, b'{"events": [{"data": 1}, {"data": ["\\ud83d"]}]}', 400, "invalid_event"),
        ("c", {"idempotency-key": "x" * 129}, b'{"data": 1}', 400, "invalid_idempotency_key"),
        ("c", {"idempotency-key": "tab\there"}, b'{"data": 1}', 400, "invalid_idempotency_key"),
        ("c", {}, b"\xff\xfe", 400, "invalid_json"),
        ("c", {}, b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json"),
        ("c", {}, b"[1]", 400, "invalid_body"),
        ("c", {}, b"{}", 400, "invalid_event"),
        ("c", {}, b'{"data": 1, "extra": 2}', 400, "invalid_event"),
        ("c", {}, b'{"event": "a\\nb", "data": 1}', 400, "invalid_event"),
        ("c", {}, b'{"event": "a\\u0000b", "data": 1}', 400, "invalid_event"),
        ("c", {}, b'{"event": "a\\rb", "data": 1}', 400, "invalid_event"),
        ("c", {}, b'{"event": "x", "id": "forged", "data": 1}', 400, "invalid_event"),
        ("c", {}, b'{"event": "reset", "data": 1}', 400, "invalid_event"),
        ("c", {}, b'{"event": "error", "data": 1}', 400, "invalid_event"),
        ("c", {}, b'{"events": [{"data": 1}, {"event": "open", "data": 2}]}', 400, "invalid_event"),
        ("c", {}, b'{"event": 7, "data": 1}', 400, "invalid_event"),
        ("c", {}, b'{"events": []}', 400, "invalid_body"),
        ("c", {}, b'{"events": [{"data": 1}], "data": 2}', 400, "invalid_body"),
        ("c", {}, b'{"events": [{"data": 1}, {"event": "x\\r"}]}', 400, "invalid_event"),
        (
            "c",
            {},
            json.dumps({"events": [{"data": i} for i in range(26)]}).encode(),
            400,
            "batch_too_large",
        ),
        ("c", {}, json.dumps({"data": "x" * 70_000}).encode(), 413, "payload_too_large"),
        ("c", {}, b'{"data": "' + b"x" * 1_100_000 + b'"}', 413, "payload_too_large"),
    ],
)
async def test_publish_rejects_bad_input_and_writes_nothing(
    gateway: StartGateway,
    http: httpx.AsyncClient,
    channel: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
    code: str,
) -> None:
    server = gateway()
    response = await http.post(
        f"{server.url}/channels/{channel}/events",
        content=body,
        headers={"content-type": "application/json", **headers},
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    (written,) = await _publish(http, server, "c", {"data": "after"})
    assert written.endswith("-1")  # the rejected request left no event behind


async def test_subscribe_starts_with_the_head_id_and_anti_buffering_headers(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(max_session_seconds=0.5)
    url = f"{server.url}/channels/c/events"
    empty = await read_session(http, url)
    assert empty.status == 200
    assert empty.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert empty.headers["cache-control"] == "no-cache"
    assert empty.headers["x-accel-buffering"] == "no"
    assert (empty.events, empty.last_event_id, empty.retry) == ([], "0", 50)
    ids = await _publish(http, server, "c", {"events": [{"data": 1}, {"data": 2}]})
    fresh = await read_session(http, url)
    assert fresh.events == []  # history before the connection is not replayed
    assert fresh.last_event_id == ids[-1]


async def test_subscribe_resumes_after_last_event_id_header_or_query(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(max_session_seconds=0.5)
    url = f"{server.url}/channels/c/events"
    ids = await _publish(http, server, "c", {"events": [{"data": i} for i in range(5)]})
    by_header = await read_session(http, url, last_event_id=ids[1])
    assert [e.last_event_id for e in by_header.events] == ids[2:]
    by_query = await read_session(http, url, params={"last_event_id": ids[3]})
    assert [e.last_event_id for e in by_query.events] == ids[4:]
    both = await read_session(http, url, last_event_id=ids[2], params={"last_event_id": ids[0]})
    assert [e.last_event_id for e in both.events] == ids[3:]  # the header wins


async def test_subscribe_delivers_live_events_and_heartbeats_then_ends_with_retry(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    # Polls 60 s apart: the event can only arrive within the session if the publish
    # through this process wakes the tail loop.
    server = gateway(
        max_session_seconds=1.5, heartbeat_seconds=0.2, poll_min_seconds=60, poll_max_seconds=60
    )
    url = f"{server.url}/channels/live/events"
    reading = asyncio.create_task(read_session(http, url))
    await asyncio.sleep(0.3)
    ids = await _publish(http, server, "live", {"data": "now"})
    session = await reading
    assert [e.last_event_id for e in session.events] == ids
    assert len(session.comments) >= 2
    assert session.retry == 50


@pytest.mark.parametrize(
    ("last_event_id", "reason"),
    [("not-an-id", "invalid_last_event_id"), ("0a0a0a0a-1", "channel_restarted")],
)
async def test_subscribe_answers_a_lost_position_with_a_reset_event(
    gateway: StartGateway, http: httpx.AsyncClient, last_event_id: str, reason: str
) -> None:
    server = gateway(max_session_seconds=0.5)
    ids = await _publish(http, server, "c", {"events": [{"data": 1}, {"data": 2}]})
    session = await read_session(
        http, f"{server.url}/channels/c/events", last_event_id=last_event_id
    )
    reset = session.events[0]
    assert reset.type == "reset"
    payload = json.loads(reset.data)
    assert payload["reason"] == reason
    assert payload["last_event_id"] == last_event_id
    assert reset.last_event_id == payload["continues_after"]
    after = [e.last_event_id for e in session.events[1:]]
    assert after == (ids if reason == "channel_restarted" else [])


async def test_subscribe_resets_when_history_expired(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(max_session_seconds=5, **FAST_EXPIRY)
    old = await _publish(http, server, "c", {"events": [{"data": 1}, {"data": 2}]})
    await asyncio.sleep(3.1)
    new = await _publish(http, server, "c", {"data": 3})
    session = await read_session(
        http,
        f"{server.url}/channels/c/events",
        last_event_id=old[0],
        stop=lambda events: len(events) == 2,
    )
    assert [e.type for e in session.events] == ["reset", "message"]
    new_epoch, new_seq = new[0].split("-")
    assert new_seq == "3"  # the whole log had expired: a new epoch opened above it
    assert json.loads(session.events[0].data) == {
        "reason": "history_expired",
        "last_event_id": old[0],
        "continues_after": f"{new_epoch}-2",
    }
    assert session.events[1].last_event_id == new[0]


async def test_subscribers_of_a_channel_share_one_tail_loop(
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
    url = f"{server.url}/channels/shared/events"

    async def queries_with(subscribers: int) -> int:
        tasks = [asyncio.create_task(read_session(http, url)) for _ in range(subscribers)]
        await asyncio.sleep(0.5)
        now = await gauges(http, server.url)
        assert (now["sse_gateway_feeds"], now["sse_gateway_open_sessions"]) == (1, subscribers)
        before = fault_proxy.seen.count("query")
        await asyncio.sleep(0.8)
        counted = fault_proxy.seen.count("query") - before
        await asyncio.gather(*tasks)
        return counted

    one, ten = await queries_with(1), await queries_with(10)
    # One loop per connection would cost ten times as many queries.
    assert one > 0 and ten <= 2 * one + 2, (one, ten)


async def test_client_disconnect_stops_the_tail_loop(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(max_session_seconds=60, heartbeat_seconds=60, metrics=True)
    session = await read_session(
        http, f"{server.url}/channels/c/events", stop=lambda events: True
    )  # stop reading at the first chunk and close the connection
    assert session.last_event_id == "0"
    for _ in range(100):
        if (await gauges(http, server.url))["sse_gateway_feeds"] == 0:
            break
        await asyncio.sleep(0.05)
    now = await gauges(http, server.url)
    assert (now["sse_gateway_feeds"], now["sse_gateway_open_sessions"]) == (0, 0)


async def test_python_api_publish_wakes_the_tail_in_process(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(max_session_seconds=3, poll_min_seconds=60, poll_max_seconds=60)
    url = f"{server.url}/channels/py/events"
    reading = asyncio.create_task(read_session(http, url, stop=lambda events: len(events) == 1))
    await asyncio.sleep(0.3)
    publisher = server.app.state.publisher
    event_id = await asyncio.to_thread(
        server.call, lambda: publisher.publish("py", {"from": "python"}, event="note")
    )
    session = await reading
    assert [(e.type, e.data, e.last_event_id) for e in session.events] == [
        ("note", '{"from":"python"}', event_id)
    ]


@pytest.mark.parametrize("channel", ["a%0Ab", "a%0D%0Aevent:%20x", "a%00b", "x" * 129])
async def test_subscribe_rejects_hostile_channel_names(
    gateway: StartGateway, http: httpx.AsyncClient, channel: str
) -> None:
    server = gateway()
    response = await http.get(f"{server.url}/channels/{channel}/events")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_channel"


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_an_encoded_slash_in_a_channel_answers_invalid_channel(
    gateway: StartGateway, http: httpx.AsyncClient, method: str
) -> None:
    server = gateway()
    response = await http.request(
        method, f"{server.url}/channels/orders%2F42/events", json={"data": 1}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_channel"
    assert "'orders/42'" in error["message"]
    assert (await http.get(f"{server.url}/channels/a/b/c")).status_code == 404


async def test_subscribe_treats_a_hostile_last_event_id_as_malformed(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(max_session_seconds=0.5)
    (written,) = await _publish(http, server, "c", {"data": 1})
    hostile = "1\n\nevent: forged\ndata: x\n"
    session = await read_session(
        http, f"{server.url}/channels/c/events", params={"last_event_id": hostile}
    )
    assert [e.type for e in session.events] == ["reset"]
    assert json.loads(session.events[0].data)["last_event_id"] == hostile
    assert session.last_event_id == written


async def test_a_cursor_far_longer_than_ours_is_refused_whole_without_being_read(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    """Entries for channels the request does not name, then a real one: decoded, it
    would resume; at over MAX_CURSOR_CHARS it is not ours, whatever it holds."""
    server = gateway(max_session_seconds=0.5)
    url = f"{server.url}/events?channel=c"
    await _publish(http, server, "c", {"data": 1})
    cursor = (await read_session(http, url)).last_event_id  # at the head, after it
    await _publish(http, server, "c", {"data": 2})
    other = next(tag for tag in ("AA", "AB") if tag != channel_tag("c"))
    padding = f"{other}." * (MAX_CURSOR_CHARS // 3)
    resumed = await read_session(http, url, last_event_id=padding[:300] + cursor)
    assert [e.type for e in resumed.events] == ["message"]  # a short cursor still resumes

    refused = await read_session(http, url, last_event_id=padding + cursor)
    assert [e.type for e in refused.events] == ["reset"]
    reset = json.loads(refused.events[0].data)
    assert (reset["channel"], reset["reason"]) == ("c", "invalid_last_event_id")


async def test_server_errors_answer_a_stable_code_and_a_request_id_and_log_the_details(
    gateway: StartGateway,
    http: httpx.AsyncClient,
    fault_proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = gateway(
        dynamodb_endpoint_url=fault_proxy.url, dynamodb_max_attempts=1, dynamodb_timeout_seconds=1
    )
    fault_proxy.refuse = True
    response = await http.post(f"{server.url}/channels/c/events", json={"data": 1})
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "store_unavailable"
    assert error["request_id"] in error["message"]
    assert "Idempotency-Key" in error["message"]  # what the publisher can do about it
    for detail in (fault_proxy.url, server.settings.table_name, "Could not connect", "botocore"):
        assert detail not in response.text
    (logged,) = [r.getMessage() for r in caplog.records if error["request_id"] in r.getMessage()]
    assert "Could not connect" in logged and fault_proxy.url in logged


async def test_cors_preflight_allows_last_event_id_and_credentials(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(cors_allowed_origins=["https://app.example"])
    preflight = await http.options(
        f"{server.url}/channels/c/events",
        headers={
            "origin": "https://app.example",
            "access-control-request-method": "GET",
            "access-control-request-headers": "last-event-id, authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert preflight.headers["access-control-allow-credentials"] == "true"
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert "last-event-id" in allowed and "authorization" in allowed
    refused = await http.options(
        f"{server.url}/channels/c/events",
        headers={"origin": "https://evil.example", "access-control-request-method": "GET"},
    )
    assert "access-control-allow-origin" not in refused.headers


async def test_publish_with_an_idempotency_key_stores_once_and_replays_the_ids(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway()
    url = f"{server.url}/channels/c/events"
    body = {"events": [{"data": 1}, {"event": "paid", "data": 2}]}
    key = {"Idempotency-Key": "order 42: paid"}
    first = await http.post(url, json=body, headers=key)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    again = await http.post(url, json=body, headers=key)
    assert (again.status_code, again.headers["idempotent-replayed"]) == (201, "true")
    assert again.json() == first.json()

    reused = await http.post(url, json={"data": 3}, headers=key)
    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"

    racing = await asyncio.gather(
        *(
            http.post(url, json={"data": "once"}, headers={"Idempotency-Key": "k2"})
            for _ in range(6)
        )
    )
    assert {r.status_code for r in racing} == {201}
    assert len({tuple(r.json()["ids"]) for r in racing}) == 1
    assert sum("idempotent-replayed" not in r.headers for r in racing) == 1

    log = await read_session(http, url, last_event_id="0", stop=lambda events: len(events) == 3)
    assert [json.loads(e.data) for e in log.events] == [1, 2, "once"]
    assert [e.last_event_id for e in log.events] == first.json()["ids"] + racing[0].json()["ids"]


@pytest.fixture
def fuzzed_server(gateway: StartGateway) -> GatewayServer:
    """One server for all the examples of a fuzz test (hypothesis reruns the test body)."""
    return gateway()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies)
@example(body='{"events":[{"data":{"k":[1,"\\u00e9"]}},{"data":null}]}')  # always one to store
@example(body='{"data":"\\ud83d"}')  # and one to refuse
async def test_every_json_body_is_stored_as_sent_or_answered_4xx(
    fuzzed_server: GatewayServer, http: httpx.AsyncClient, body: str
) -> None:
    # The answer over HTTP is the one the validation gives in-process: a server
    # that refused everything (or stored everything) would differ.
    limits = fuzzed_server.settings
    try:
        expected = events_from_body(
            parse_json_body(body.encode()),
            max_event_bytes=limits.max_event_bytes,
            max_batch_events=limits.max_batch_events,
        )
    except InvalidInput as exc:
        refused: InvalidInput | None = exc
    else:
        refused = None
    url = f"{fuzzed_server.url}/channels/fuzz/events"
    response = await http.post(url, content=body, headers={"content-type": "application/json"})
    if refused is not None:
        assert response.status_code == refused.status_code, response.text
        assert response.json()["error"] == {"code": refused.code, "message": refused.message}
        return
    assert response.status_code == 201, response.text
    ids = response.json()["ids"]
    assert len(ids) == len(expected)
    epoch, first = ids[0].split("-")
    replay = await read_session(
        http, url, last_event_id=f"{epoch}-{int(first) - 1}", stop=lambda e: len(e) == len(ids)
    )
    assert [e.last_event_id for e in replay.events] == ids
    assert [e.data for e in replay.events] == [e.data for e in expected]
    sent = json.loads(body)
    values = [e["data"] for e in sent["events"]] if "events" in sent else [sent["data"]]
    assert [parse_json_body(e.data.encode()) for e in replay.events] == values


@pytest.mark.parametrize(
    ("query", "code", "named"),
    [
        ("", "missing_channel", "at least one channel"),
        ("&".join(f"channel=c{i}" for i in range(17)), "too_many_channels", "at most 16"),
        ("channel=ok&channel=not%20ok", "invalid_channel", "'not ok'"),
    ],
)
async def test_a_bad_channel_list_answers_400_naming_the_problem(
    gateway: StartGateway, http: httpx.AsyncClient, query: str, code: str, named: str
) -> None:
    server = gateway()
    response = await http.get(f"{server.url}/events?{query}")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code
    assert named in error["message"]
    # Duplicates count once: 16 distinct channels named twice each are allowed.
    twice = "&".join(f"channel=c{i % 16}" for i in range(32))
    session = await read_session(http, f"{server.url}/events?{twice}", stop=lambda events: True)
    assert session.status == 200
