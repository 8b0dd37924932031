"""What real DynamoDB answers and moto never does, scripted at the fault proxy:
transaction conflicts, a transaction in progress, throttling, and error codes the
gateway does not know. None may become a 500, and none may write half a publish."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest

from gateway.items import NewEvent
from gateway.settings import Settings
from gateway.store import EventLog
from tests.eventstream import read_session, seq_of
from tests.servers import FaultProxy, GatewayServer, dynamodb_error
from tests.test_metrics import ZERO_STORE_ERRORS, by_label, scrape

StartGateway = Callable[..., GatewayServer]
OpenLog = Callable[..., AbstractAsyncContextManager[EventLog]]

_CANCELLED_BY_CONFLICT = dynamodb_error(
    "TransactionCanceledException",
    "Transaction cancelled, please refer cancellation reasons for specific reasons "
    "[None, TransactionConflict]",
    CancellationReasons=[
        {"Code": "None"},
        {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"},
    ],
)
_PUT_MEETS_A_TRANSACTION = dynamodb_error(
    "TransactionConflictException", "Transaction is ongoing for the item"
)
_IN_PROGRESS = dynamodb_error(
    "TransactionInProgressException", "The transaction with the given request token is running"
)


async def _publish(http: httpx.AsyncClient, server: GatewayServer, data: object) -> httpx.Response:
    return await http.post(f"{server.url}/channels/c/events", json={"data": data})


async def test_writes_cancelled_by_a_concurrent_transaction_are_tried_again(
    gateway: StartGateway, http: httpx.AsyncClient, fault_proxy: FaultProxy
) -> None:
    server = gateway(dynamodb_endpoint_url=fault_proxy.url, metrics=True)
    fault_proxy.fail("putitem", _PUT_MEETS_A_TRANSACTION, times=2)  # the channel's first write
    first = await _publish(http, server, 1)
    fault_proxy.fail("transactwriteitems", _CANCELLED_BY_CONFLICT, times=3)  # every later one
    second = await _publish(http, server, 2)
    fault_proxy.fail("transactwriteitems", _IN_PROGRESS, times=1)  # botocore retries this one
    third = await _publish(http, server, 3)
    assert [r.status_code for r in (first, second, third)] == [201, 201, 201]
    assert fault_proxy.seen.count("putitem") == 3
    assert fault_proxy.seen.count("transactwriteitems") == 4 + 2
    ids = [r.json()["ids"][0] for r in (first, second, third)]
    assert [seq_of(i) for i in ids] == [1, 2, 3]
    replay = await read_session(
        http, f"{server.url}/channels/c/events", last_event_id="0", stop=lambda e: len(e) == 3
    )
    assert [e.data for e in replay.events] == ["1", "2", "3"]  # each stored once
    errors = by_label(await scrape(http, server), "sse_gateway_store_errors_total", "kind")
    assert errors == {**ZERO_STORE_ERRORS, "conflict": 5}


async def test_conflicts_past_the_budget_answer_503_with_retry_after_and_write_nothing(
    gateway: StartGateway, http: httpx.AsyncClient, fault_proxy: FaultProxy
) -> None:
    server = gateway(dynamodb_endpoint_url=fault_proxy.url)
    assert (await _publish(http, server, "kept")).status_code == 201
    fault_proxy.fail("transactwriteitems", _CANCELLED_BY_CONFLICT, times=100)
    refused = await _publish(http, server, "refused")
    assert refused.status_code == 503
    assert refused.headers["Retry-After"]
    assert refused.json()["error"]["code"] == "store_unavailable"
    fault_proxy.clear_failures()
    after = await _publish(http, server, "next")
    assert [seq_of(i) for i in after.json()["ids"]] == [2]


@pytest.mark.parametrize("code", ["ProvisionedThroughputExceededException", "ThrottlingException"])
async def test_a_hot_partition_answers_503_with_retry_after_and_is_counted(
    make_settings: Callable[..., Settings],
    http: httpx.AsyncClient,
    fault_proxy: FaultProxy,
    code: str,
) -> None:
    settings = make_settings(
        metrics=True, dynamodb_endpoint_url=fault_proxy.url, dynamodb_max_attempts=2
    )
    with GatewayServer(settings) as server:
        fault_proxy.fail("putitem", dynamodb_error(code, "Throughput exceeds the limit"), times=2)
        refused = await _publish(http, server, 1)
        assert (refused.status_code, refused.json()["error"]["code"]) == (503, "store_unavailable")
        assert refused.headers["Retry-After"]
        errors = by_label(await scrape(http, server), "sse_gateway_store_errors_total", "kind")
    assert errors == {**ZERO_STORE_ERRORS, "throttled": 1}


async def test_an_error_code_the_gateway_does_not_know_is_a_logged_503_not_a_500(
    gateway: StartGateway,
    http: httpx.AsyncClient,
    fault_proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = gateway(dynamodb_endpoint_url=fault_proxy.url)
    fault_proxy.fail("putitem", dynamodb_error("ShinyNewException", "something new"))
    with caplog.at_level(logging.ERROR, logger="gateway.dynamodb"):
        refused = await _publish(http, server, 1)
    assert (refused.status_code, refused.json()["error"]["code"]) == (503, "store_unavailable")
    assert "ShinyNewException" in caplog.text
    assert (await _publish(http, server, 2)).status_code == 201


async def test_the_python_api_retries_a_cancelled_transaction_within_its_budget(
    open_log: OpenLog, fault_proxy: FaultProxy
) -> None:
    async with open_log(dynamodb_endpoint_url=fault_proxy.url) as log:
        await log.append("c", [NewEvent("1")])
        fault_proxy.fail("transactwriteitems", _CANCELLED_BY_CONFLICT, times=6)
        appended = await log.append("c", [NewEvent("2")])
        assert [e.seq for e in appended.events] == [2]
        assert log.stats.writes == 1 + 7
