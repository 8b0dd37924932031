"""The event table as the code uses it: one definition for local runs, tests and template.yaml.

Whatever state the table is found in, ``ensure_table`` leaves it usable: it
returns only once the table is ``ACTIVE`` (created now, found, or created by
someone else meanwhile), and a table found without TTL on the expiry attribute
gets it enabled, since without TTL no event would ever be deleted. If enabling
TTL fails, the start goes on and says what to do; the next start tries again.

A test parses ``template.yaml`` and checks its table against ``KEY_SCHEMA``,
``ATTRIBUTE_DEFINITIONS`` and ``TTL_ATTRIBUTE`` here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from gateway.items import PARTITION_KEY, SORT_KEY, TTL_ATTRIBUTE

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

logger = logging.getLogger(__name__)

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
    """Create the table (on-demand, TTL on the expiry attribute) unless it exists,
    and wait until it is ``ACTIVE`` with TTL on. Returns True when it was created."""
    created = False
    try:
        await client.describe_table(TableName=table_name)
    except client.exceptions.ResourceNotFoundException:
        definition: dict[str, Any] = {
            "TableName": table_name,
            "KeySchema": KEY_SCHEMA,
            "AttributeDefinitions": ATTRIBUTE_DEFINITIONS,
            "BillingMode": "PAY_PER_REQUEST",
        }
        try:
            await client.create_table(**definition)
            created = True
        except client.exceptions.ResourceInUseException:
            pass  # created concurrently by someone else
    await client.get_waiter("table_exists").wait(
        TableName=table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
    )
    await _ensure_ttl(client, table_name)
    return created


async def _ensure_ttl(client: DynamoDBClient, table_name: str) -> None:
    what_to_do = (
        f"events in table {table_name!r} will not expire until TTL is on: it is tried again "
        "at the next start, or turn it on with `aws dynamodb update-time-to-live --table-name "
        f"{table_name} --time-to-live-specification Enabled=true,AttributeName={TTL_ATTRIBUTE}`"
    )
    try:
        ttl = (await client.describe_time_to_live(TableName=table_name))["TimeToLiveDescription"]
        status, attribute = ttl.get("TimeToLiveStatus"), ttl.get("AttributeName")
        if status in ("ENABLED", "ENABLING") and attribute == TTL_ATTRIBUTE:
            return
        if status in ("ENABLED", "ENABLING", "DISABLING"):
            logger.warning("TTL of the table is %s on %r; %s", status, attribute, what_to_do)
            return
        await client.update_time_to_live(
            TableName=table_name,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
        )
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        logger.warning("could not turn TTL on (%s); %s", code, what_to_do)
    except BotoCoreError as exc:
        logger.warning("could not turn TTL on (%s); %s", exc, what_to_do)
