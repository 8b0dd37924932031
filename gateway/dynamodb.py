"""The aioboto3 DynamoDB client, configured once for every caller, and what its
errors mean to the gateway.

Throttling and transient errors are retried by botocore's ``standard`` retry
mode (exponential backoff with jitter); nothing here re-implements it.
``total_max_attempts`` counts the first attempt too, as the setting's name
says (botocore's ``max_attempts`` key would count retries only).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from gateway.errors import GatewayError, StoreMisconfigured, StoreUnavailable
from gateway.metrics import Metrics
from gateway.settings import Settings

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

_UNAVAILABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionInProgressException",
        "TransactionConflictException",
        "TransactionCanceledException",
    }
)
# Of those, the ones that say the table needs more capacity.
_THROTTLING_CODES = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}
)
_MISCONFIGURED_CODES = frozenset(
    {"ResourceNotFoundException", "AccessDeniedException", "UnrecognizedClientException"}
)


@asynccontextmanager
async def open_dynamodb(
    settings: Settings, session: aioboto3.Session | None = None
) -> AsyncIterator[DynamoDBClient]:
    config = AioConfig(
        retries={"mode": "standard", "total_max_attempts": settings.dynamodb_max_attempts},
        connect_timeout=settings.dynamodb_timeout_seconds,
        read_timeout=settings.dynamodb_timeout_seconds,
    )
    async with (session or aioboto3.Session()).client(
        "dynamodb",
        endpoint_url=settings.dynamodb_endpoint_url,
        region_name=settings.dynamodb_region,
        config=config,
    ) as client:
        yield client


@contextmanager
def store_errors(table_name: str, metrics: Metrics, operation: str) -> Iterator[None]:
    """One DynamoDB call: counted, and its failure (after botocore's retries) counted
    by kind and translated into the gateway's errors."""
    metrics.store_request(operation)
    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in _UNAVAILABLE_CODES:
            metrics.store_error("throttled" if code in _THROTTLING_CODES else "unavailable")
            raise StoreUnavailable(
                f"DynamoDB is throttling or unavailable ({code}) after retries; try again shortly"
            ) from exc
        if code in _MISCONFIGURED_CODES:
            metrics.store_error("misconfigured")
            raise StoreMisconfigured(
                f"DynamoDB table {table_name!r} is missing or not accessible ({code}); "
                "check SSE_GATEWAY_TABLE_NAME and the function's permissions"
            ) from exc
        metrics.store_error("rejected")
        raise GatewayError(f"DynamoDB rejected the request ({code}): {exc}") from exc
    except BotoCoreError as exc:
        metrics.store_error("unavailable")
        raise StoreUnavailable(f"DynamoDB could not be reached ({exc}); try again shortly") from exc
