from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from gateway.dynamodb import open_dynamodb
from gateway.settings import Settings
from infra.local import local_session
from infra.table import ATTRIBUTE_DEFINITIONS, KEY_SCHEMA, TTL_ATTRIBUTE, ensure_table
from tests.servers import FaultProxy, dynamodb_answer, dynamodb_error


async def _ttl(settings: Settings) -> dict[str, str]:
    async with open_dynamodb(settings, local_session()) as client:
        answer = await client.describe_time_to_live(TableName=settings.table_name)
    return dict(answer["TimeToLiveDescription"])


async def test_ensure_table_creates_once_with_ttl(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    async with open_dynamodb(settings, local_session()) as client:
        assert await ensure_table(client, settings.table_name) is True
        assert await ensure_table(client, settings.table_name) is False
        table = (await client.describe_table(TableName=settings.table_name))["Table"]
        assert table["KeySchema"] == KEY_SCHEMA
        assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert await _ttl(settings) == {
        "AttributeName": TTL_ATTRIBUTE,
        "TimeToLiveStatus": "ENABLED",
    }


async def test_a_table_found_without_ttl_gets_it(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    async with open_dynamodb(settings, local_session()) as client:
        await client.create_table(
            TableName=settings.table_name,
            KeySchema=KEY_SCHEMA,  # type: ignore[arg-type]
            AttributeDefinitions=ATTRIBUTE_DEFINITIONS,  # type: ignore[arg-type]
            BillingMode="PAY_PER_REQUEST",
        )
        assert (await _ttl(settings))["TimeToLiveStatus"] == "DISABLED"
        assert await ensure_table(client, settings.table_name) is False
    assert (await _ttl(settings))["TimeToLiveStatus"] == "ENABLED"


async def test_a_table_still_being_created_is_waited_for(
    make_settings: Callable[..., Settings], fault_proxy: FaultProxy
) -> None:
    settings = make_settings(dynamodb_endpoint_url=fault_proxy.url)
    async with open_dynamodb(settings, local_session()) as client:
        await ensure_table(client, settings.table_name)
        creating = {"Table": {"TableName": settings.table_name, "TableStatus": "CREATING"}}
        fault_proxy.fail("describetable", dynamodb_answer(creating), times=2)
        described = fault_proxy.seen.count("describetable")
        assert await ensure_table(client, settings.table_name) is False
    # Found CREATING, then twice more by the waiter: CREATING, then ACTIVE.
    assert fault_proxy.seen.count("describetable") == described + 3


async def test_ttl_that_cannot_be_turned_on_is_reported_and_tried_at_the_next_start(
    make_settings: Callable[..., Settings],
    fault_proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(dynamodb_endpoint_url=fault_proxy.url)
    refused = dynamodb_error(
        "ValidationException",
        "Time to live has been modified multiple times within a fixed interval",
    )
    fault_proxy.fail("updatetimetolive", refused)
    async with open_dynamodb(settings, local_session()) as client:
        with caplog.at_level(logging.WARNING, logger="infra.table"):
            assert await ensure_table(client, settings.table_name) is True
        assert "ValidationException" in caplog.text
        assert "aws dynamodb update-time-to-live" in caplog.text
        assert (await _ttl(settings))["TimeToLiveStatus"] == "DISABLED"
        assert await ensure_table(client, settings.table_name) is False  # the next start
    assert (await _ttl(settings))["TimeToLiveStatus"] == "ENABLED"
