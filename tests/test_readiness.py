"""Readiness: ``GET /readyz`` against a real store, a store that is down, a real Redis;
and configuration errors at start, as processes with a controlled environment."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.servers import (
    FaultProxy,
    GatewayServer,
    RedisServer,
    bare_environment,
    dynamodb_error,
    free_port,
    sse_gateway_command,
)

StartGateway = Callable[..., GatewayServer]


LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local-secret-value",
    "AWS_DEFAULT_REGION": "us-east-1",
}


async def test_readyz_is_ready_when_the_store_answers(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway()
    response = await http.get(f"{server.url}/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"store": "ok", "notifier": "off"}}


@pytest.mark.parametrize("fault", ["refuse", "stall"])
async def test_readyz_answers_503_naming_the_endpoint_while_the_store_is_down(
    gateway: StartGateway, http: httpx.AsyncClient, fault_proxy: FaultProxy, fault: str
) -> None:
    server = gateway(
        dynamodb_endpoint_url=fault_proxy.url, dynamodb_max_attempts=2, dynamodb_timeout_seconds=1
    )
    setattr(fault_proxy, fault, True)
    response = await http.get(f"{server.url}/readyz")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "not_ready"
    assert "SSE_GATEWAY_DYNAMODB_ENDPOINT_URL" in error["message"]
    assert fault_proxy.url not in response.text  # variables named, never their values
    assert response.json()["checks"]["notifier"] == "off"
    assert (await http.get(f"{server.url}/healthz")).status_code == 200  # still alive
    setattr(fault_proxy, fault, False)
    assert (await http.get(f"{server.url}/readyz")).status_code == 200


async def test_readyz_names_the_table_when_it_is_missing_or_not_accessible(
    gateway: StartGateway, http: httpx.AsyncClient, fault_proxy: FaultProxy
) -> None:
    server = gateway(dynamodb_endpoint_url=fault_proxy.url)
    # moto enforces no IAM: DynamoDB's answer to a role without dynamodb:Query.
    fault_proxy.fail("query", dynamodb_error("AccessDeniedException", "not authorized"))
    response = await http.get(f"{server.url}/readyz")
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert "SSE_GATEWAY_TABLE_NAME" in message and "dynamodb:Query" in message
    assert server.settings.table_name not in response.text


async def test_readyz_checks_the_notifier_once_one_is_configured(
    gateway: StartGateway, http: httpx.AsyncClient, redis_server: Callable[..., RedisServer]
) -> None:
    redis = redis_server(password="redis-password-value")
    server = gateway(notify_url=redis.url)
    response = await http.get(f"{server.url}/readyz")
    assert (response.status_code, response.json()["checks"]) == (
        200,
        {"store": "ok", "notifier": "ok"},
    )
    redis.kill()
    response = await http.get(f"{server.url}/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["store"] == "ok"
    assert "SSE_GATEWAY_NOTIFY_URL" in response.json()["error"]["message"]
    assert "redis-password-value" not in response.text
    redis_server(port=redis.port, password="redis-password-value")
    assert (await http.get(f"{server.url}/readyz")).status_code == 200


def _serve(env: dict[str, str], port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        sse_gateway_command("serve", "--port", str(port)),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({}, "SSE_GATEWAY_DYNAMODB_REGION"),
        ({"AWS_DEFAULT_REGION": "us-east-1"}, "AWS_ACCESS_KEY_ID"),
        # Credentials but no table of that name on the store.
        ({**LOCAL_CREDENTIALS, "SSE_GATEWAY_TABLE_NAME": "no-such-table"}, "TABLE_NAME"),
    ],
)
def test_serve_stops_at_start_naming_what_to_set(
    dynamodb_endpoint: str, variables: dict[str, str], named: str
) -> None:
    env = bare_environment(SSE_GATEWAY_DYNAMODB_ENDPOINT_URL=dynamodb_endpoint, **variables)
    process = _serve(env, free_port())
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2, output
    assert named in output
    assert "Traceback" not in output
    assert "local-secret-value" not in output


def test_serve_starts_on_a_store_that_is_down_and_is_not_ready_until_it_answers(
    fault_proxy: FaultProxy,
) -> None:
    fault_proxy.refuse = True
    env = bare_environment(
        **LOCAL_CREDENTIALS,
        SSE_GATEWAY_DYNAMODB_ENDPOINT_URL=fault_proxy.url,
        SSE_GATEWAY_DYNAMODB_MAX_ATTEMPTS="1",
        SSE_GATEWAY_TABLE_NAME=f"absent-{uuid.uuid4().hex[:12]}",
    )
    port = free_port()
    process = _serve(env, port)
    url = f"http://127.0.0.1:{port}"
    try:
        health = _wait_for(f"{url}/healthz", process)
        assert health.status_code == 200
        assert httpx.get(f"{url}/readyz").status_code == 503
        fault_proxy.refuse = False
        # The store answers now, and it has no such table.
        message = httpx.get(f"{url}/readyz").json()["error"]["message"]
        assert "SSE_GATEWAY_TABLE_NAME" in message
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=15)
    assert "GET /readyz answers 503" in output
    assert "Traceback" not in output


def _wait_for(url: str, process: subprocess.Popen[Any]) -> httpx.Response:
    for _ in range(300):
        assert process.poll() is None, process.communicate()[0]
        try:
            return httpx.get(url)
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer")
