"""The publish function: Mangum over the gateway's publish routes, behind a buffered
function URL.

The app and its DynamoDB client are built on the first invocation and kept for
the execution environment. aiobotocore's client belongs to the event loop it
was opened on, so this module owns that loop and hands it to Mangum (which
runs each invocation on the current loop).

Each request carries the invocation's deadline, less the configured margin, so
the app answers 503 ("publish again with the same Idempotency-Key") before
Lambda would cut the invocation off with an error of its own.
"""

from __future__ import annotations

import asyncio
import sys
import time
from contextlib import AsyncExitStack
from typing import Any

from mangum import Mangum
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.app import create_app
from gateway.dynamodb import open_dynamodb
from gateway.metrics import metrics_for
from gateway.request_bounds import DEADLINE_EXTENSION
from gateway.settings import load_settings
from gateway.store import EventLog
from handlers.emf import EmfReporter


class InvocationDeadline:
    """ASGI middleware: passes the Lambda invocation's deadline (Mangum puts the
    context in the scope) to the app, ``margin_seconds`` early."""

    def __init__(self, app: ASGIApp, margin_seconds: float) -> None:
        self._app = app
        self._margin = margin_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = scope.get("aws.context")
        if context is not None and scope["type"] == "http":
            remaining = context.get_remaining_time_in_millis() / 1000 - self._margin
            deadline = {DEADLINE_EXTENSION: time.monotonic() + remaining}
            scope = {**scope, "extensions": {**scope.get("extensions", {}), **deadline}}
        await self._app(scope, receive, send)


class PublishFunction:
    def __init__(self) -> None:
        self._adapter: Mangum | None = None
        self._reporter: EmfReporter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resources = AsyncExitStack()

    def _build(self) -> Mangum:
        settings = load_settings()
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        client = self._loop.run_until_complete(
            self._resources.enter_async_context(open_dynamodb(settings))
        )
        metrics = metrics_for(settings)
        self._reporter = EmfReporter(metrics, sys.stdout, function=settings.lambda_function_name)
        store = EventLog.for_settings(client, settings, metrics=metrics)
        app = create_app(settings, store, subscribe=False, metrics=metrics, metrics_route=False)
        return Mangum(
            InvocationDeadline(app, settings.lambda_deadline_margin_seconds),
            lifespan="off",
        )

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        if self._adapter is None:
            self._adapter = self._build()
        try:
            return self._adapter(event, context)
        finally:
            if self._reporter is not None:
                self._reporter.flush()  # the environment may be frozen once this returns

    def close(self) -> None:
        """Release the client (execution environments end without this; tests call it)."""
        if self._loop is not None:
            # As asyncio.run ends: a write still out (a hung DynamoDB) is cancelled and
            # finishes on its own loop, not in whatever collects it later.
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self._resources.aclose())
            self._loop.close()
            self._loop = None
            self._adapter = None


handler = PublishFunction()
