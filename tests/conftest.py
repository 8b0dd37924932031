from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest

from gateway.dynamodb import open_dynamodb
from gateway.settings import Settings
from gateway.store import EventLog
from infra.local import embedded_dynamodb, local_session
from infra.table import ensure_table
from tests.servers import FaultProxy, GatewayServer


@pytest.fixture(scope="session")
def dynamodb_endpoint() -> Iterator[str]:
    with embedded_dynamodb() as url:
        yield url


@pytest.fixture
def make_settings(dynamodb_endpoint: str) -> Callable[..., Settings]:
    """Settings for a fresh table on the embedded DynamoDB, fast enough for tests."""
    table = f"events-{uuid.uuid4().hex[:12]}"

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "table_name": table,
            "dynamodb_endpoint_url": dynamodb_endpoint,
            "poll_min_seconds": 0.05,
            "poll_max_seconds": 0.2,
            "retry_ms": 50,
            "max_session_seconds": 5.0,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def open_log(
    make_settings: Callable[..., Settings],
) -> Callable[..., AbstractAsyncContextManager[EventLog]]:
    """A factory: ``async with open_log(**settings) as log`` on a created table."""

    @asynccontextmanager
    async def open_(
        clock: Callable[[], float] | None = None, create_table: bool = True, **overrides: Any
    ) -> AsyncIterator[EventLog]:
        settings = make_settings(**overrides)
        async with open_dynamodb(settings, local_session()) as client:
            if create_table:
                await ensure_table(client, settings.table_name)
            extra = {"clock": clock} if clock else {}
            yield EventLog(
                client,
                settings.table_name,
                retention_seconds=settings.retention_seconds,
                **extra,
            )

    return open_


@pytest.fixture
def gateway(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., GatewayServer]]:
    """A factory of running gateway servers on the test's table; all stop at teardown."""
    servers: list[GatewayServer] = []

    def start(**overrides: Any) -> GatewayServer:
        server = GatewayServer(make_settings(**overrides)).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def fault_proxy(dynamodb_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(dynamodb_endpoint) as proxy:
        yield proxy


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as client:
        yield client
