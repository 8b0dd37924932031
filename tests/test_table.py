from __future__ import annotations

from collections.abc import Callable

from gateway.dynamodb import open_dynamodb
from gateway.settings import Settings
from infra.local import local_session
from infra.table import KEY_SCHEMA, TTL_ATTRIBUTE, ensure_table


async def test_ensure_table_creates_once_with_ttl(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    async with open_dynamodb(settings, local_session()) as client:
        assert await ensure_table(client, settings.table_name) is True
        assert await ensure_table(client, settings.table_name) is False
        table = (await client.describe_table(TableName=settings.table_name))["Table"]
        assert table["KeySchema"] == KEY_SCHEMA
        assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        ttl = await client.describe_time_to_live(TableName=settings.table_name)
        assert ttl["TimeToLiveDescription"]["AttributeName"] == TTL_ATTRIBUTE
        assert ttl["TimeToLiveDescription"]["TimeToLiveStatus"] == "ENABLED"
