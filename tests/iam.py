"""What each function does to DynamoDB, recorded at the wire, as the IAM actions
AWS checks: the template's roles and the README's policy are tested against it.

moto enforces no IAM, so a missing grant shows only on AWS. Here each function
runs through its real entry point with DynamoDB behind the FaultProxy, which
keeps every request's ``X-Amz-Target`` operation and body; the paths driven are those that
issue different requests (a first publish, a batch, keyed ones and a replay, a
publish that lost a race, one that opens an epoch above an expired item,
subscriptions with and without resume, on one channel and several). Only the
mapping from a request to its actions is written down here, from AWS's
documentation: an operation is the action of its name, except that a
transaction is authorized item by item ("Using IAM with DynamoDB transactions").
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from typing import Any

import botocore.session

from gateway.items import NewEvent
from gateway.publisher import open_publisher
from gateway.settings import Settings
from gateway.store import EventLog
from handlers.publish import PublishFunction
from infra.local import local_session
from tests.lambda_events import LambdaContext, load_event
from tests.lambda_runtime import RuntimeAPIEmulator
from tests.servers import FaultProxy

TRANSACTION_ITEM_ACTIONS = {
    "TransactWriteItems": {
        "Put": "PutItem",
        "Update": "UpdateItem",
        "Delete": "DeleteItem",
        "ConditionCheck": "ConditionCheckItem",
    },
    "TransactGetItems": {"Get": "GetItem"},
}
# Short enough that an item written "long ago" has expired, and longer than the
# longest write (Settings refuses less).
RETENTION_SECONDS = 100
OpenLog = Callable[..., AbstractAsyncContextManager[EventLog]]


def iam_actions(requests: Iterable[tuple[str, bytes]], table: str) -> set[str]:
    """The IAM actions the recorded DynamoDB requests need, each on ``table`` itself
    (asserted: no index, no other table, so the table's ARN is the only resource)."""
    model = botocore.session.get_session().get_service_model("dynamodb")
    operations = {name.lower(): name for name in model.operation_names}
    actions: set[str] = set()
    for target, body in requests:
        operation = operations[target]
        request = json.loads(body)
        if operation in TRANSACTION_ITEM_ACTIONS:
            kinds = TRANSACTION_ITEM_ACTIONS[operation]
            for entry in request["TransactItems"]:
                ((kind, item),) = entry.items()
                assert item["TableName"] == table, item
                actions.add(kinds[kind])
            continue
        tables = request["RequestItems"] if "RequestItems" in request else [request["TableName"]]
        assert set(tables) == {table} and "IndexName" not in request, request
        actions.add(operation)
    return {f"dynamodb:{action}" for action in actions}


async def seed(open_log: OpenLog, channel: str, *, expired: bool = False) -> None:
    """Two events on ``channel`` written directly (not recorded); ``expired``: written
    long enough ago that the channel's newest item has expired but is still there."""
    past = time.time() - 10 * RETENTION_SECONDS
    clock = (lambda: past) if expired else None
    async with open_log(clock=clock, retention_seconds=RETENTION_SECONDS) as log:
        await log.append(channel, [NewEvent('"a"'), NewEvent('"b"')])


def _on(name: str, channel: str, **headers: str) -> dict[str, Any]:
    event = load_event(name, **headers)
    path = f"/channels/{channel}/events"
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    return event


def record_publish_function(
    proxy: FaultProxy, settings: Settings, open_log: OpenLog, env: Callable[[str, str], None]
) -> list[tuple[str, bytes]]:
    """The publish function (Mangum, as Lambda calls it), configured through ``env``."""
    asyncio.run(seed(open_log, "stale:1", expired=True))
    for name, value in {
        "SSE_GATEWAY_TABLE_NAME": settings.table_name,
        "SSE_GATEWAY_DYNAMODB_ENDPOINT_URL": proxy.url,
        "SSE_GATEWAY_RETENTION_SECONDS": str(RETENTION_SECONDS),
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        env(name, value)
    function = PublishFunction()
    try:
        invocations = [
            load_event("publish_single"),
            load_event("publish_batch_base64"),
            load_event("publish_single", idempotency_key="order-42-paid"),
            load_event("publish_single", idempotency_key="order-42-paid"),  # a replay
            _on("publish_single", "stale:1"),  # opens an epoch above an expired item
        ]
        statuses = [function(event, LambdaContext(30))["statusCode"] for event in invocations]
        assert statuses == [201] * len(invocations), statuses
        # Another writer moves the end the function has cached: it loses a race. (On a
        # thread of its own: asyncio.run here would unset the function's event loop.)
        with ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, seed(open_log, "orders:42")).result()
        assert function(load_event("publish_single"), LambdaContext(30))["statusCode"] == 201
    finally:
        function.close()
    return [(t.operation, t.body) for t in proxy.traced]


async def record_publisher(
    proxy: FaultProxy, settings: Settings, open_log: OpenLog
) -> list[tuple[str, bytes]]:
    """``open_publisher``, as a user's own service calls it."""
    await seed(open_log, "stale:1", expired=True)
    own = settings.model_copy(
        update={"dynamodb_endpoint_url": proxy.url, "retention_seconds": RETENTION_SECONDS}
    )
    async with open_publisher(own, local_session()) as publisher:
        await publisher.publish("orders:42", {"status": "paid"})
        await publisher.publish_many("orders:42", [{"data": 1}, {"data": 2, "event": "n"}])
        for _ in range(2):
            await publisher.publish("orders:42", "x", idempotency_key="order-42-paid")
        await publisher.publish("stale:1", "x")
        await seed(open_log, "orders:42")
        await publisher.publish("orders:42", "after another writer")
    return [(t.operation, t.body) for t in proxy.traced]


async def record_subscribe_function(
    proxy: FaultProxy, settings: Settings
) -> list[tuple[str, bytes]]:
    """``python -m handlers.stream`` against the Runtime API emulator, as Lambda runs it."""
    async with RuntimeAPIEmulator() as emulator:
        environment = {
            **os.environ,
            "AWS_LAMBDA_RUNTIME_API": emulator.address,
            "SSE_GATEWAY_TABLE_NAME": settings.table_name,
            "SSE_GATEWAY_DYNAMODB_ENDPOINT_URL": proxy.url,
            "SSE_GATEWAY_MAX_SESSION_SECONDS": "1",
            "SSE_GATEWAY_POLL_MAX_SECONDS": "0.2",
            "SSE_GATEWAY_LAMBDA_DEADLINE_MARGIN_SECONDS": "1",
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "handlers.stream",
            env=environment,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            resumed = await asyncio.wait_for(
                emulator.invoke(load_event("subscribe_query_resume"), 20), 60
            )
            assert b'data: "b"' in resumed.payload, resumed.payload  # it read the log
            for name in ("subscribe", "subscribe_channels"):
                outcome = await asyncio.wait_for(emulator.invoke(load_event(name), 20), 60)
                assert outcome.prelude["statusCode"] == 200, outcome.prelude
        finally:
            process.kill()
            await process.wait()
    return [(t.operation, t.body) for t in proxy.traced]
