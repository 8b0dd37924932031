"""Publishing from Python code (a worker, another Lambda) without an HTTP hop.

    async with open_publisher(load_settings()) as publisher:
        event_id = await publisher.publish("orders:42", {"status": "paid"})

The same validation as the HTTP API applies, so both paths write the same log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import aioboto3
from pydantic import JsonValue

from gateway.dynamodb import open_dynamodb
from gateway.settings import Settings
from gateway.store import EventLog, NewEvent, StoredEvent
from gateway.validation import check_channel, new_events


class AppendListener(Protocol):
    def notify(self, channel: str) -> None: ...


class Publisher:
    def __init__(
        self, store: EventLog, settings: Settings, listener: AppendListener | None = None
    ) -> None:
        self._store = store
        self._settings = settings
        self._listener = listener

    async def publish(self, channel: str, data: JsonValue, *, event: str | None = None) -> str:
        """Append one event; returns its id once it is durably in the log."""
        item: dict[str, Any] = {"data": data} if event is None else {"data": data, "event": event}
        (event_id,) = await self.publish_many(channel, [item])
        return event_id

    async def publish_many(self, channel: str, events: Sequence[Mapping[str, Any]]) -> list[str]:
        """Append ``[{"data": ..., "event": ...}, ...]`` as consecutive ids, all or nothing."""
        check_channel(channel)
        checked = new_events(
            events,
            max_event_bytes=self._settings.max_event_bytes,
            max_batch_events=self._settings.max_batch_events,
        )
        return [event.event_id for event in await self.append(channel, checked)]

    async def append(self, channel: str, events: Sequence[NewEvent]) -> list[StoredEvent]:
        """Append already validated events and wake this process's tail of the channel."""
        stored = await self._store.append(channel, events)
        if self._listener is not None:
            self._listener.notify(channel)
        return stored


@asynccontextmanager
async def open_publisher(
    settings: Settings, session: aioboto3.Session | None = None
) -> AsyncIterator[Publisher]:
    async with open_dynamodb(settings, session) as client:
        store = EventLog(client, settings.table_name, retention_seconds=settings.retention_seconds)
        yield Publisher(store, settings)
