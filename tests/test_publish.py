"""The publish function through Mangum, fed function URL events from tests/events/."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator

import pytest

from gateway.dynamodb import open_dynamodb
from gateway.settings import Settings
from handlers.publish import PublishFunction
from infra.local import local_session
from infra.table import ensure_table
from tests.cloudwatch import datapoints, only, total
from tests.lambda_events import LambdaContext, load_event
from tests.servers import FaultProxy


@pytest.fixture
def publish_function(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., PublishFunction]]:
    """A factory of the function as Lambda runs it: configured only through its environment."""
    settings = make_settings()
    monkeypatch.setenv("SSE_GATEWAY_TABLE_NAME", settings.table_name)
    monkeypatch.setenv("SSE_GATEWAY_DYNAMODB_ENDPOINT_URL", str(settings.dynamodb_endpoint_url))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "local")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "local")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    functions: list[PublishFunction] = []

    def make(create_table: bool = True, **env: str) -> PublishFunction:
        if create_table:
            asyncio.run(_create_table(settings))  # before the function opens its own loop
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        functions.append(PublishFunction())
        return functions[-1]

    yield make
    for function in functions:
        function.close()


async def _create_table(settings: Settings) -> None:
    async with open_dynamodb(settings, local_session()) as client:
        await ensure_table(client, settings.table_name)


def test_publish_function_appends_events_from_function_url_events(
    publish_function: Callable[..., PublishFunction],
) -> None:
    function = publish_function()
    single = function(load_event("publish_single"), None)
    assert single["statusCode"] == 201, single
    (first,) = json.loads(single["body"])["ids"]
    batch = function(load_event("publish_batch_base64"), None)
    assert batch["statusCode"] == 201, batch
    ids = json.loads(batch["body"])["ids"]
    assert [i.rsplit("-", 1)[1] for i in [first, *ids]] == ["1", "2", "3"]
    assert {i.split("-")[0] for i in [first, *ids]} == {first.split("-")[0]}


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("publish_invalid_channel", 400, "invalid_channel"),
        ("publish_wrong_content_type", 415, "unsupported_media_type"),
        ("publish_to_subscribe_route", 405, "method_not_allowed"),
    ],
)
def test_publish_function_rejects_bad_requests_with_json_errors(
    publish_function: Callable[..., PublishFunction], name: str, status: int, code: str
) -> None:
    function = publish_function()
    response = function(load_event(name), None)
    assert response["statusCode"] == status
    assert json.loads(response["body"])["error"]["code"] == code
    ok = function(load_event("publish_single"), None)
    assert json.loads(ok["body"])["ids"][0].endswith("-1")  # nothing was written before


def test_publish_function_reports_a_missing_table_as_misconfiguration(
    publish_function: Callable[..., PublishFunction],
) -> None:
    function = publish_function(create_table=False)
    response = function(load_event("publish_single"), None)
    assert response["statusCode"] == 500
    error = json.loads(response["body"])["error"]
    assert error["code"] == "store_misconfigured"
    assert "SSE_GATEWAY_TABLE_NAME" in error["message"]


def test_publish_function_answers_503_before_its_deadline_when_dynamodb_hangs(
    publish_function: Callable[..., PublishFunction], fault_proxy: FaultProxy
) -> None:
    function = publish_function(
        SSE_GATEWAY_DYNAMODB_ENDPOINT_URL=fault_proxy.url,
        SSE_GATEWAY_DYNAMODB_MAX_ATTEMPTS="5",
        SSE_GATEWAY_DYNAMODB_TIMEOUT_SECONDS="5",
        SSE_GATEWAY_LAMBDA_DEADLINE_MARGIN_SECONDS="2",
    )
    ok = function(load_event("publish_single"), LambdaContext(timeout_seconds=10))
    assert ok["statusCode"] == 201  # the function is warm: its client is open
    fault_proxy.stall = True
    started = time.monotonic()
    response = function(load_event("publish_single"), LambdaContext(timeout_seconds=4))
    # Correctness, not speed: Lambda would cut the invocation off at its 4 s timeout
    # (the store alone would hang ~25 s); the function answers 2 s before it (its
    # margin), which leaves those 2 s of slack for the machine.
    assert time.monotonic() - started < 4
    assert response["statusCode"] == 503
    error = json.loads(response["body"])["error"]
    assert error["code"] == "store_unavailable"
    assert "Idempotency-Key" in error["message"]


def test_publish_function_reports_each_invocations_metrics_as_emf_lines(
    publish_function: Callable[..., PublishFunction], capsys: pytest.CaptureFixture[str]
) -> None:
    function = publish_function(
        SSE_GATEWAY_METRICS="true", AWS_LAMBDA_FUNCTION_NAME="sse-gateway-publish"
    )
    named = {"function": "sse-gateway-publish"}
    assert function(load_event("publish_single"), None)["statusCode"] == 201
    # Flushed before the invocation returned: the environment may never run again.
    first = datapoints(capsys.readouterr().out.splitlines())
    assert total(first, "sse_gateway_events_published_total", **named) == 1
    assert total(first, "sse_gateway_store_requests_total", **named, operation="query") == 1
    assert total(first, "sse_gateway_store_requests_total", **named, operation="put") == 1
    assert only(first, "sse_gateway_publish_seconds", **named).count == 1

    assert function(load_event("publish_batch_base64"), None)["statusCode"] == 201
    second = datapoints(capsys.readouterr().out.splitlines())
    # What this invocation did, not the function's totals: the end was cached.
    assert total(second, "sse_gateway_events_published_total", **named) == 2
    assert total(second, "sse_gateway_store_requests_total", **named, operation="query") == 0
    # The channel's second write: a transaction with the check of the item it follows.
    assert total(second, "sse_gateway_store_requests_total", **named, operation="put") == 0
    assert (
        total(second, "sse_gateway_store_requests_total", **named, operation="transact_write") == 1
    )
    # Nothing of subscriptions in the publish function, not even zeros.
    assert not {p.name for p in first + second} & {"sse_gateway_open_sessions", "sse_gateway_feeds"}

    assert function(load_event("publish_invalid_channel"), None)["statusCode"] == 400
    assert capsys.readouterr().out == ""  # nothing happened, nothing to say
