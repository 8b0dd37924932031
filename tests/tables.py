"""Acting on the event table from outside the gateway, as DynamoDB's TTL or an
operator would: deleting items in any order, reading them raw."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.dynamodb import open_dynamodb
from gateway.settings import Settings
from infra.local import local_session


async def delete_items(settings: Settings, channel: str, keys: Iterable[int]) -> None:
    """Delete the channel's items with these sort keys, in the order given."""
    async with open_dynamodb(settings, local_session()) as client:
        for key in keys:
            await client.delete_item(
                TableName=settings.table_name,
                Key={"channel": {"S": channel}, "seq": {"N": str(key)}},
            )


async def raw_items(settings: Settings, channel: str) -> list[dict[str, Any]]:
    """Every item of the channel's partition, oldest first, as DynamoDB returns them."""
    items: list[dict[str, Any]] = []
    async with open_dynamodb(settings, local_session()) as client:
        paginator = client.get_paginator("query")
        async for page in paginator.paginate(
            TableName=settings.table_name,
            KeyConditionExpression="#c = :c",
            ExpressionAttributeNames={"#c": "channel"},
            ExpressionAttributeValues={":c": {"S": channel}},
            ConsistentRead=True,
        ):
            items.extend(page["Items"])
    return items


async def put_raw_items(settings: Settings, items: Iterable[dict[str, Any]]) -> None:
    """Write items as they are, as a hand edit of the table would."""
    async with open_dynamodb(settings, local_session()) as client:
        for item in items:
            await client.put_item(TableName=settings.table_name, Item=item)
