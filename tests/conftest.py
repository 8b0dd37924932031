from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import settings as hypothesis_settings
from playwright.async_api import BrowserContext as Browser
from playwright.async_api import async_playwright

from gateway.dynamodb import open_dynamodb
from gateway.settings import Settings
from gateway.store import EventLog
from infra.local import embedded_dynamodb, local_session
from infra.table import ensure_table
from tests.servers import FaultProxy, GatewayProcess, GatewayServer, RedisServer

CHROMIUM = "/usr/bin/chromium"
# As root in a closed network: no sandbox, and none of Chromium's own calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# No wall-clock limit per example (hypothesis's deadline is one): on a busy
# machine a pure function's example can take longer than 200 ms.
hypothesis_settings.register_profile("default", deadline=None)
hypothesis_settings.load_profile("default")
# For bench/mutation.py, which runs a module's tests once per mutant: fewer
# examples, the same ones each run (pytest --hypothesis-profile=mutation).
hypothesis_settings.register_profile("mutation", max_examples=25, derandomize=True, deadline=None)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-seed",
        type=int,
        default=None,
        help="the random seed of tests/test_soak.py (default: a new one, printed)",
    )


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
            "overload_retry_ms": 50,
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
            yield EventLog.for_settings(client, settings, **({"clock": clock} if clock else {}))

    return open_


@pytest.fixture
def gateway(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., GatewayServer]]:
    """A factory of running gateway servers on the test's table; all stop at teardown."""
    servers: list[GatewayServer] = []

    def start(
        clock: Callable[[], float] = time.time,
        protocol: type[asyncio.Protocol] | None = None,
        **overrides: Any,
    ) -> GatewayServer:
        server = GatewayServer(make_settings(**overrides), clock, protocol).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def gateway_process(dynamodb_endpoint: str) -> Iterator[Callable[..., GatewayProcess]]:
    """A factory of ``sse-gateway dev`` processes on the test's table; all killed at teardown.
    Keyword arguments are settings (``max_session_seconds=2``)."""
    table = f"events-{uuid.uuid4().hex[:12]}"
    processes: list[GatewayProcess] = []

    def start(**settings: Any) -> GatewayProcess:
        # As make_settings: a store error ends a session with the normal retry here.
        env = {"SSE_GATEWAY_TABLE_NAME": table, "SSE_GATEWAY_OVERLOAD_RETRY_MS": "200"}
        env.update({f"SSE_GATEWAY_{key.upper()}": str(value) for key, value in settings.items()})
        process = GatewayProcess(dynamodb_endpoint, env).start()
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.kill()


@pytest.fixture
def redis_server() -> Iterator[Callable[..., RedisServer]]:
    """A factory of real ``redis-server`` processes on free loopback ports (``port=`` to
    start one again where a killed one was); all killed at teardown."""
    servers: list[RedisServer] = []

    def start(
        port: int | None = None, password: str | None = None, cluster_dir: Path | None = None
    ) -> RedisServer:
        server = RedisServer(port, password, cluster_dir).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    """Headless Chromium from Debian's package, with a fresh profile."""
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 900, "height": 600},
        )
        yield context
        await context.close()


@pytest.fixture
def fault_proxy(dynamodb_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(dynamodb_endpoint) as proxy:
        yield proxy


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as client:
        yield client
