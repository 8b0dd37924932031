"""The aioboto3 DynamoDB client, configured once for every caller, and what its
errors mean to the gateway.

Every error DynamoDB can answer becomes one of the gateway's: throttling and
outages ``StoreUnavailable`` (503, try again), a missing table or denied access
``StoreMisconfigured``, a write cancelled by a concurrent transaction
``WriteConflict``, and any code not named here ``StoreUnavailable`` too, with
a log line naming it, never a silent 500.

Throttling and transient errors are retried by botocore's ``standard`` retry
mode (exponential backoff with jitter); nothing here re-implements it.
``total_max_attempts`` counts the first attempt too, as the setting's name
says (botocore's ``max_attempts`` key would count retries only). Standard mode
does not retry ``TransactionConflictException`` or a transaction cancelled for
a ``TransactionConflict`` (it cannot read cancellation reasons): the appender
does (``gateway/commit.py``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from gateway.errors import StoreMisconfigured, StoreUnavailable, WriteConflict
from gateway.metrics import Metrics
from gateway.readiness import check_aws_environment
from gateway.settings import Settings

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

logger = logging.getLogger(__name__)

_UNAVAILABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionInProgressException",
        "TransactionCanceledException",
    }
)
# Of those, the ones that say the table needs more capacity (a transaction's
# cancellation reasons have names of their own).
_THROTTLING_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "ProvisionedThroughputExceeded",
        "ThrottlingError",
    }
)
_CONFLICT_CODES = frozenset({"TransactionConflictException", "TransactionConflict"})
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
    session = session or aioboto3.Session()
    # A missing region or credentials is a configuration error, named at start
    # (botocore would raise NoRegionError here, or fail every request later).
    await check_aws_environment(settings, session)
    async with session.client(
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
        error: dict[str, Any] = dict(exc.response)
        code = error.get("Error", {}).get("Code", "")
        # A cancelled transaction says why in a reason per item.
        reasons = {r.get("Code") for r in error.get("CancellationReasons", [])} - {"None"}
        if code in _CONFLICT_CODES or reasons & _CONFLICT_CODES:
            metrics.store_error("conflict")
            raise WriteConflict(
                f"a DynamoDB write met a concurrent transaction ({code}); try again shortly"
            ) from exc
        if code in _UNAVAILABLE_CODES:
            throttled = code in _THROTTLING_CODES or bool(reasons & _THROTTLING_CODES)
            metrics.store_error("throttled" if throttled else "unavailable")
            raise StoreUnavailable(
                f"DynamoDB is throttling or unavailable ({code}) after retries; try again shortly"
            ) from exc
        if code in _MISCONFIGURED_CODES:
            metrics.store_error("misconfigured")
            raise StoreMisconfigured(
                f"DynamoDB table {table_name!r} is missing or not accessible ({code}); "
                "check SSE_GATEWAY_TABLE_NAME and the function's permissions"
            ) from exc
        # Not an answer this code knows: most likely passing (an error DynamoDB added
        # since), so try again; the log names it for whoever must look.
        metrics.store_error("unknown")
        logger.error("DynamoDB %s answered an unexpected error %s: %s", operation, code, exc)
        raise StoreUnavailable(
            f"DynamoDB answered an unexpected error ({code}); try again shortly"
        ) from exc
    except BotoCoreError as exc:
        metrics.store_error("unavailable")
        raise StoreUnavailable(f"DynamoDB could not be reached ({exc}); try again shortly") from exc
