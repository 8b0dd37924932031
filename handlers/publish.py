"""The publish function: Mangum over the gateway's publish routes, behind a buffered
function URL.

The app and its DynamoDB client are built on the first invocation and kept for
the execution environment. aiobotocore's client belongs to the event loop it
was opened on, so this module owns that loop and hands it to Mangum (which
runs each invocation on the current loop).
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

from mangum import Mangum

from gateway.app import create_app
from gateway.dynamodb import open_dynamodb
from gateway.settings import load_settings
from gateway.store import EventLog


class PublishFunction:
    def __init__(self) -> None:
        self._adapter: Mangum | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resources = AsyncExitStack()

    def _build(self) -> Mangum:
        settings = load_settings()
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        client = self._loop.run_until_complete(
            self._resources.enter_async_context(open_dynamodb(settings))
        )
        store = EventLog(client, settings.table_name, retention_seconds=settings.retention_seconds)
        return Mangum(create_app(settings, store, subscribe=False), lifespan="off")

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        if self._adapter is None:
            self._adapter = self._build()
        return self._adapter(event, context)

    def close(self) -> None:
        """Release the client (execution environments end without this; tests call it)."""
        if self._loop is not None:
            self._loop.run_until_complete(self._resources.aclose())
            self._loop.close()
            self._loop = None
            self._adapter = None


handler = PublishFunction()
