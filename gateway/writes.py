"""The log's conditional writes: a batch into a free slot, alone (the first item
of a log) or in one transaction with the check that the item it follows is
still there, unchanged (``gateway/items.py`` says why), and its idempotency
records. Each returns what holds the slot or the keys instead, so the caller
(``gateway/commit.py``) can tell a lost race from its own earlier attempt whose
answer was lost."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from gateway.dynamodb import store_errors
from gateway.items import PARTITION_KEY, SORT_KEY, TTL_ATTRIBUTE, LogEnd
from gateway.metrics import Metrics

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient


async def put_batch(
    client: DynamoDBClient, table: str, metrics: Metrics, item: dict[str, Any]
) -> dict[str, Any] | None:
    """Put ``item`` into a free slot; returns the item that holds the slot instead,
    or None when the slot holds ``item`` (written now, or by an earlier attempt
    whose response was lost)."""
    with store_errors(table, metrics, "put"):
        try:
            await client.put_item(
                TableName=table,
                Item=item,
                ConditionExpression="attribute_not_exists(#s)",
                ExpressionAttributeNames={"#s": SORT_KEY},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            response: dict[str, Any] = dict(exc.response)
            existing: dict[str, Any] | None = response.get("Item")
            if existing is None:
                raise
            return None if existing["wid"] == item["wid"] else existing
    return None


async def transact_batch(
    client: DynamoDBClient,
    table: str,
    metrics: Metrics,
    item: dict[str, Any],
    follows: LogEnd | None,
    records: list[dict[str, Any]],
    now: float,
) -> tuple[dict[str, Any] | None, bool, list[dict[str, Any] | None]]:
    """The batch, the check that the item it follows is unchanged, and the
    idempotency records, in one transaction. Returns the item holding the slot if
    the slot was taken; whether the item it follows moved (deleted or replaced:
    read the end again); and for each record the existing one if its key was
    taken. (None, False, [None, ...]) when all of it is ours."""
    checks: list[Any] = []
    if follows is not None:
        key = {PARTITION_KEY: item[PARTITION_KEY], SORT_KEY: {"N": str(follows.key)}}
        checks.append(
            {
                "ConditionCheck": {
                    "TableName": table,
                    "Key": key,
                    "ConditionExpression": "#w = :w",
                    "ExpressionAttributeNames": {"#w": "wid"},
                    "ExpressionAttributeValues": {":w": {"S": follows.write_id}},
                }
            }
        )
    # An expired record that TTL has not deleted yet no longer counts.
    transaction: Any = [
        {
            "Put": {
                "TableName": table,
                "Item": item,
                "ConditionExpression": "attribute_not_exists(#s)",
                "ExpressionAttributeNames": {"#s": SORT_KEY},
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        },
        *checks,
        *(
            {
                "Put": {
                    "TableName": table,
                    "Item": record,
                    "ConditionExpression": "attribute_not_exists(#c) OR #e <= :now",
                    "ExpressionAttributeNames": {"#c": PARTITION_KEY, "#e": TTL_ATTRIBUTE},
                    "ExpressionAttributeValues": {":now": {"N": str(int(now))}},
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            }
            for record in records
        ),
    ]
    mine: list[dict[str, Any] | None] = [None] * len(records)
    with store_errors(table, metrics, "transact_write"):
        try:
            await client.transact_write_items(TransactItems=transaction)
        except ClientError as exc:
            response: dict[str, Any] = dict(exc.response)
            if response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            # One reason per item, in order: the slot's, the check's, each record's.
            reasons = response.get("CancellationReasons", [])
            failed = [
                i < len(reasons) and reasons[i].get("Code") == "ConditionalCheckFailed"
                for i in range(len(transaction))
            ]
            if not any(failed):
                raise  # a conflict or throttling, not a condition (gateway.dynamodb)
            held = [reasons[i].get("Item") if failed[i] else None for i in range(len(failed))]
            if any(x is not None and x.get("wid") == item["wid"] for x in held):
                return None, False, mine  # an earlier attempt of ours landed
            return held[0], any(failed[1 : 1 + len(checks)]), held[1 + len(checks) :]
    return None, False, mine
