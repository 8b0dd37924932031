"""The lean Query path: the request the aioboto3 client sends, signed as botocore
signs it, answered, retried and failing as through the client.

moto checks no signature, so the signature is proved here against botocore's
own: the client's request for the same Query and credentials, recorded at its
``before-send`` event (and in tests/test_sigv4.py against botocore's
``SigV4Auth`` for endpoints moto cannot stand for). Transport failures are
scripted with the FaultProxy and compared with what the client raises.
"""

from __future__ import annotations

import calendar
import time
import zlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import aioboto3
import pytest
from aiobotocore.config import AioConfig
from botocore.exceptions import ClientError

from gateway.dynamodb import open_dynamodb
from gateway.errors import StoreMisconfigured, StoreUnavailable
from gateway.items import NewEvent
from gateway.query import LeanQuery, attempts_of
from gateway.settings import Settings
from gateway.store import EventLog
from infra.local import local_session
from infra.table import ensure_table
from tests.servers import FaultProxy, dynamodb_error, free_port

OpenLog = Callable[..., AbstractAsyncContextManager[EventLog]]
_SIGNED_BY_BOTH = ("X-Amz-Target", "Content-Type", "X-Amz-Date", "Authorization")


def _query(table: str, channel: str, after: int) -> dict[str, Any]:
    """A tail query as the log makes it."""
    return {
        "TableName": table,
        "KeyConditionExpression": "#c = :c AND #s > :s",
        "ExpressionAttributeNames": {"#c": "channel", "#s": "seq"},
        "ExpressionAttributeValues": {":c": {"S": channel}, ":s": {"N": str(after)}},
        "ConsistentRead": True,
        "ScanIndexForward": True,
        "Limit": 100,
    }


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _epoch(amz_date: str) -> float:
    return float(calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ")))


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzE/session+token=="])
async def test_the_request_and_its_signature_are_the_clients_for_the_same_query(
    make_settings: Callable[..., Settings], token: str | None
) -> None:
    settings = make_settings()
    session = aioboto3.Session(
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        aws_session_token=token,
        region_name="us-east-1",
    )
    sent: list[Any] = []
    params = _query(settings.table_name, "c", 0)
    async with open_dynamodb(settings, session) as client:
        await ensure_table(client, settings.table_name)
        client.meta.events.register(
            "before-send.dynamodb.Query", lambda request, **_: sent.append(request)
        )
        await client.query(**params)
        (theirs,) = sent
        at = _epoch(_text(theirs.headers["X-Amz-Date"]))
        lean = LeanQuery(client, clock=lambda: at)
        headers, body = lean.serialize(params)
        ours = await lean.signed(headers, body)

    assert (lean.url, body) == (theirs.url, theirs.body)
    for name in _SIGNED_BY_BOTH:
        assert ours[name] == _text(theirs.headers[name]), name
    if token is None:
        assert "X-Amz-Security-Token" not in ours
    else:
        assert ours["X-Amz-Security-Token"] == _text(theirs.headers["X-Amz-Security-Token"])
    assert "SignedHeaders=content-type;host;x-amz-date;" in ours["Authorization"]
    # What aiobotocore's session adds to every request before aiohttp sends it.
    assert ours["Accept-Encoding"] == "identity"


def test_attempts_are_read_as_botocore_reads_them() -> None:
    assert [attempts_of(None), attempts_of({"max_attempts": 4})] == [3, 5]
    assert attempts_of({"mode": "standard", "total_max_attempts": 2}) == 2


async def test_answers_are_the_clients(
    open_log: OpenLog, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    async with open_log() as log:
        await log.append("c", [NewEvent("1"), NewEvent("2", event="named")])
        await log.append("c", [NewEvent('{"x": "\\u00e9"}')])
    async with open_dynamodb(settings, local_session()) as client:
        for after in (0, 2, 3):
            params = _query(settings.table_name, "c", after)
            theirs = await client.query(**params)
            ours = await LeanQuery(client).query(params)
            theirs.pop("ResponseMetadata")
            assert ours == theirs
            assert len(ours["Items"]) == {0: 2, 2: 1, 3: 0}[after]


async def test_throttled_queries_are_retried_within_the_clients_budget(
    open_log: OpenLog, fault_proxy: FaultProxy
) -> None:
    async with open_log(dynamodb_endpoint_url=fault_proxy.url, dynamodb_max_attempts=3) as log:
        await log.append("c", [NewEvent("1")])
        fault_proxy.throttle("query", 2)
        before, counted = fault_proxy.seen.count("query"), log.stats.queries
        page = await log.read_after("c", 0)
        assert [e.data for e in page.events] == ["1"]
        assert fault_proxy.seen.count("query") - before == 3
        fault_proxy.throttle("query", 3)
        with pytest.raises(StoreUnavailable, match="throttling"):
            await log.read_after("c", 0)
        assert fault_proxy.seen.count("query") - before == 6
        assert log.stats.queries - counted == 2  # the log's count is of calls, not attempts


async def test_an_answer_not_worth_retrying_is_raised_at_once_as_the_clients_error(
    open_log: OpenLog, fault_proxy: FaultProxy
) -> None:
    async with open_log(dynamodb_endpoint_url=fault_proxy.url, dynamodb_max_attempts=3) as log:
        fault_proxy.fail("query", dynamodb_error("ResourceNotFoundException", "no table"))
        with pytest.raises(StoreMisconfigured, match="ResourceNotFoundException") as raised:
            await log.read_after("c", 0)
        assert fault_proxy.seen.count("query") == 1
        cause: Any = raised.value.__cause__
        assert type(cause).__name__ == "ResourceNotFoundException"
        assert cause.response["Error"] == {
            "Code": "ResourceNotFoundException",
            "Message": "no table",
        }
        assert cause.operation_name == "Query"


async def test_a_refused_connection_is_tried_again_then_unavailable(
    open_log: OpenLog, fault_proxy: FaultProxy
) -> None:
    async with open_log(dynamodb_endpoint_url=fault_proxy.url, dynamodb_max_attempts=2) as log:
        fault_proxy.refuse = True
        with pytest.raises(StoreUnavailable, match="could not be reached"):
            await log.read_after("c", 0)
        fault_proxy.refuse = False
        assert (await log.read_after("c", 0)).events == []


async def test_the_clients_before_call_handlers_see_each_query_once(
    make_settings: Callable[..., Settings], fault_proxy: FaultProxy
) -> None:
    settings = make_settings(dynamodb_endpoint_url=fault_proxy.url, dynamodb_max_attempts=2)
    calls: list[str] = []

    def traced(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls.append(model.name)
        params["headers"]["X-Amzn-Trace-Id"] = "Root=1-lean"

    async with open_dynamodb(settings, local_session()) as client:
        await ensure_table(client, settings.table_name)
        client.meta.events.register("before-call.dynamodb", traced)
        fault_proxy.throttle("query", 1)
        await LeanQuery(client).query(_query(settings.table_name, "c", 0))
    assert calls == ["Query"]  # once per call, not per attempt
    queries = [t for t in fault_proxy.traced if t.operation == "query"]
    assert [t.trace_id for t in queries] == ["Root=1-lean", "Root=1-lean"]


EMPTY_ANSWER = b'{"Count": 0, "Items": [], "ScannedCount": 0}'


def _answer(body: bytes, *, crc32: int) -> bytes:
    """A whole HTTP answer of 200 with ``body`` and DynamoDB's ``x-amz-crc32`` header."""
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\n"
        b"x-amz-crc32: %d\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
    )
    return head % (crc32 & 0xFFFFFFFF, len(body)) + body


async def test_an_answer_that_fails_dynamodbs_checksum_is_tried_again(
    open_log: OpenLog, fault_proxy: FaultProxy
) -> None:
    corrupt = _answer(EMPTY_ANSWER, crc32=zlib.crc32(EMPTY_ANSWER) + 1)
    async with open_log(dynamodb_endpoint_url=fault_proxy.url, dynamodb_max_attempts=2) as log:
        await log.append("c", [NewEvent("1")])
        fault_proxy.fail("query", corrupt)
        before = fault_proxy.seen.count("query")
        assert [e.data for e in (await log.read_after("c", 0)).events] == ["1"]
        assert fault_proxy.seen.count("query") - before == 2


@pytest.mark.parametrize("path", ["client", "lean"])
async def test_a_garbled_answer_that_fails_dynamodbs_checksum_is_tried_again(
    make_settings: Callable[..., Settings], fault_proxy: FaultProxy, path: str
) -> None:
    # A body garbled on the way (what the CRC32 is for) need not be JSON any more:
    # botocore's parser then answers {"message": ...}, the checksum fails, and
    # standard mode tries again. The lean path must too, not raise a JSONDecodeError
    # (no StoreError: a session would end without retry:).
    garbled = EMPTY_ANSWER.replace(b"}", b"]", 1)  # one byte off: not JSON
    corrupt = _answer(garbled, crc32=zlib.crc32(EMPTY_ANSWER))
    settings = make_settings(dynamodb_endpoint_url=fault_proxy.url, dynamodb_max_attempts=2)
    params = _query(settings.table_name, "c", 0)
    async with open_dynamodb(settings, local_session()) as client:
        await ensure_table(client, settings.table_name)
        fault_proxy.fail("query", corrupt)
        before = fault_proxy.seen.count("query")
        if path == "client":
            answer: Any = await client.query(**params)
        else:
            answer = await LeanQuery(client).query(params)
    assert answer["Items"] == []
    assert fault_proxy.seen.count("query") - before == 2


async def test_answers_that_fail_dynamodbs_checksum_on_every_attempt_are_an_outage(
    open_log: OpenLog, fault_proxy: FaultProxy
) -> None:
    # Not botocore's way (it returns the last body as parsed, which would read as a
    # channel without items): the store is unavailable, so a session ends with retry:.
    corrupt = _answer(EMPTY_ANSWER, crc32=zlib.crc32(EMPTY_ANSWER) + 1)
    async with open_log(dynamodb_endpoint_url=fault_proxy.url, dynamodb_max_attempts=2) as log:
        await log.append("c", [NewEvent("1")])
        fault_proxy.fail("query", corrupt, times=2)
        with pytest.raises(StoreUnavailable, match="crc32"):
            await log.read_after("c", 0)
        assert [e.data for e in (await log.read_after("c", 0)).events] == ["1"]


_FAULTS = {
    # What the proxy does to the next Query, and what both paths must raise for it.
    "nothing listens": ("", "EndpointConnectionError"),
    "answer lost": ("drop", "ConnectionClosedError"),
    "not HTTP": (b"garbage\r\n\r\n", "HTTPClientError"),
    "body cut short": (_answer(EMPTY_ANSWER, crc32=0)[:-5], "ConnectionClosedError"),
    "never answered": ("stall", "ReadTimeoutError"),
}


@pytest.mark.parametrize("fault", list(_FAULTS))
async def test_a_transport_failure_is_the_botocore_error_the_client_raises(
    make_settings: Callable[..., Settings], fault_proxy: FaultProxy, fault: str
) -> None:
    how, expected = _FAULTS[fault]
    url = f"http://127.0.0.1:{free_port()}" if how == "" else fault_proxy.url
    settings = make_settings(
        dynamodb_endpoint_url=url, dynamodb_max_attempts=1, dynamodb_timeout_seconds=0.5
    )
    params = _query(settings.table_name, "c", 0)
    raised: dict[str, Exception] = {}
    async with open_dynamodb(settings, local_session()) as client:
        for path, call in [
            ("client", lambda: client.query(**params)),
            ("lean", lambda: LeanQuery(client).query(params)),
        ]:
            if how == "stall":
                fault_proxy.stall = True
            elif how == "drop":
                fault_proxy.drop_response_once("query")
            elif isinstance(how, bytes):
                fault_proxy.fail("query", how)
            with pytest.raises(Exception) as caught:
                await call()
            raised[path] = caught.value
    assert type(raised["client"]).__name__ == expected
    assert type(raised["lean"]) is type(raised["client"])
    assert str(raised["lean"]) == str(raised["client"])


async def test_queries_go_through_the_clients_proxy(
    make_settings: Callable[..., Settings], fault_proxy: FaultProxy
) -> None:
    # An HTTP proxy receives the request in absolute form; the FaultProxy counts it
    # and passes it on as it came, which moto refuses (it is no proxy): the same
    # answer, on the same way, for the client and the lean path.
    settings = make_settings(dynamodb_max_attempts=1)
    params = _query(settings.table_name, "c", 0)
    config = AioConfig(proxies={"http": fault_proxy.url}, retries={"total_max_attempts": 1})
    raised = []
    for path in ("client", "lean"):  # a client each: the proxy closes every connection
        async with local_session().client(
            "dynamodb", endpoint_url=settings.dynamodb_endpoint_url, config=config
        ) as client:
            with pytest.raises(ClientError) as caught:
                if path == "client":
                    await client.query(**params)
                else:
                    await LeanQuery(client).query(params)
            raised.append(caught.value)
    assert fault_proxy.seen.count("query") == 2
    assert [str(e) for e in raised] == [str(raised[0])] * 2
    assert "Absolute URI" in str(raised[0])
