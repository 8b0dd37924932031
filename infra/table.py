"""The event table as the code uses it: one definition for local runs, tests and template.yaml.

A test parses ``template.yaml`` and checks its table against ``KEY_SCHEMA``,
``ATTRIBUTE_DEFINITIONS`` and ``TTL_ATTRIBUTE`` here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.items import PARTITION_KEY, SORT_KEY, TTL_ATTRIBUTE

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

KEY_SCHEMA: list[dict[str, str]] = [
    {"AttributeName": PARTITION_KEY, "KeyType": "HASH"},
    {"AttributeName": SORT_KEY, "KeyType": "RANGE"},
]
ATTRIBUTE_DEFINITIONS: list[dict[str, str]] = [
    {"AttributeName": PARTITION_KEY, "AttributeType": "S"},
    {"AttributeName": SORT_KEY, "AttributeType": "N"},
]
__all__ = ["ATTRIBUTE_DEFINITIONS", "KEY_SCHEMA", "TTL_ATTRIBUTE", "ensure_table"]


async def ensure_table(client: DynamoDBClient, table_name: str) -> bool:
    """Create the table (on-demand, TTL on the expiry attribute) unless it exists.

    Returns True when it was created.
    """
    try:
        await client.describe_table(TableName=table_name)
        return False
    except client.exceptions.ResourceNotFoundException:
        pass
    definition: dict[str, Any] = {
        "TableName": table_name,
        "KeySchema": KEY_SCHEMA,
        "AttributeDefinitions": ATTRIBUTE_DEFINITIONS,
        "BillingMode": "PAY_PER_REQUEST",
    }
    try:
        await client.create_table(**definition)
    except client.exceptions.ResourceInUseException:
        return False  # created concurrently by someone else
    await client.get_waiter("table_exists").wait(
        TableName=table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
    )
    await client.update_time_to_live(
        TableName=table_name,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
    )
    return True
