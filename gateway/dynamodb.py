"""The aioboto3 DynamoDB client, configured once for every caller.

Throttling and transient errors are retried by botocore's ``standard`` retry
mode (exponential backoff with jitter); nothing here re-implements it.
``total_max_attempts`` counts the first attempt too, as the setting's name
says (botocore's ``max_attempts`` key would count retries only).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import aioboto3
from aiobotocore.config import AioConfig

from gateway.settings import Settings

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient


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
