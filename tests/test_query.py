"""The lean Query path: the request the aioboto3 client sends, signed as botocore
signs it, answered, retried and failing as through the client.

moto checks no signature, so the signature is proved here against botocore's
own: the client's request for the same Query and credentials, recorded at its
``before-send`` event; and botocore's ``SigV4Auth`` for endpoints moto cannot
stand for (HTTPS on the default port, a path, IPv6).
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
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from gateway.dynamodb import open_dynamodb
from gateway.errors import StoreMisconfigured, StoreUnavailable
from gateway.items import NewEvent
from gateway.query import LeanQuery, Signer, attempts_of, host_of
from gateway.settings import Settings
from gateway.store import EventLog
from infra.local import local_session
from infra.table import ensure_table
from tests.servers import FaultProxy, dynamodb_error

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
        ours = await lean.signed(*lean.serialize(params))

    assert (ours.method, ours.url, ours.body) == (theirs.method, theirs.url, theirs.body)
    for name in _SIGNED_BY_BOTH:
        assert ours.headers[name] == _text(theirs.headers[name]), name
    if token is None:
        assert "X-Amz-Security-Token" not in ours.headers
    else:
        assert ours.headers["X-Amz-Security-Token"] == _text(theirs.headers["X-Amz-Security-Token"])
    assert "SignedHeaders=content-type;host;x-amz-date;" in ours.headers["Authorization"]


@pytest.mark.parametrize(
    "url",
    [
        "https://dynamodb.eu-west-3.amazonaws.com",
        "https://dynamodb.eu-west-3.amazonaws.com:443",
        "http://localhost:8000",
        "https://proxy.internal:8443/dynamodb",
        "http://[::1]:8000",
    ],
)
@pytest.mark.parametrize("extra", [{}, {"X-Amzn-Trace-Id": "Root=1-abc;Sampled=1"}])
def test_the_signature_is_botocores_sigv4_at_any_endpoint(url: str, extra: dict[str, str]) -> None:
    credentials = Credentials("AKIDEXAMPLE", "secret/key+", "a  token  with  spaces")
    headers = {"X-Amz-Target": "DynamoDB_20120810.Query", "Content-Type": "x", **extra}
    body = b'{"TableName": "t\\u00e9"}'
    theirs = AWSRequest(method="POST", url=url, headers=dict(headers), data=body)
    SigV4Auth(credentials, "dynamodb", "eu-west-3").add_auth(theirs)
    ours = Signer("eu-west-3", url).sign(
        headers,
        body,
        access_key=credentials.access_key,
        secret_key=credentials.secret_key,
        token=credentials.token,
        now=_epoch(theirs.context["timestamp"]),
    )
    assert ours["Authorization"] == theirs.headers["Authorization"]
    assert ours["X-Amz-Date"] == theirs.headers["X-Amz-Date"]


def test_the_signing_key_is_derived_again_on_a_new_day_or_secret() -> None:
    signer = Signer("us-east-1", "http://localhost:8000/")
    day = 86_400.0
    signatures = set()
    for secret, now in [("s", 10 * day), ("s", 10 * day + 5), ("s", 11 * day), ("t", 11 * day)]:
        ours = signer.sign({}, b"{}", access_key="a", secret_key=secret, token=None, now=now)
        theirs = AWSRequest(method="POST", url="http://localhost:8000/", data=b"{}")
        theirs.headers["X-Amz-Date"] = theirs.context["timestamp"] = ours["X-Amz-Date"]
        auth = SigV4Auth(Credentials("a", secret), "dynamodb", "us-east-1")
        string_to_sign = auth.string_to_sign(theirs, auth.canonical_request(theirs))
        assert ours["Authorization"].endswith(f"Signature={auth.signature(string_to_sign, theirs)}")
        signatures.add(ours["Authorization"])
    assert len(signatures) == 4


def test_host_and_attempts_are_read_as_botocore_reads_them() -> None:
    assert host_of("https://dynamodb.us-east-1.amazonaws.com:443/") == (
        "dynamodb.us-east-1.amazonaws.com"
    )
    assert host_of("http://user:pw@Example.com:8000") == "example.com:8000"
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
