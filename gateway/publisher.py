"""Publishing from Python code (a worker, another Lambda) without an HTTP hop.

    async with open_publisher(load_settings()) as publisher:
        event_id = await publisher.publish("orders:42", {"status": "paid"})
        page = await publisher.history("orders:42", limit=20)  # as GET .../history answers

The same validation as the HTTP API applies, so both paths write the same log,
and both notify other processes (``SSE_GATEWAY_NOTIFY_URL``, ``gateway/notify.py``)
once an append is stored: the one place a stored append is announced.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import aioboto3
from pydantic import JsonValue

from gateway.commit import Appended
from gateway.dynamodb import open_dynamodb
from gateway.history import DEFAULT_LIMIT, check_limit, parse_before
from gateway.items import NewEvent, StoredEvent
from gateway.metrics import Metrics
from gateway.notify import Notifier, notifier_for
from gateway.settings import Settings
from gateway.store import EventLog
from gateway.validation import check_channel, check_idempotency_key, new_events


class AppendListener(Protocol):
    def appended(self, channel: str, events: Sequence[StoredEvent]) -> None: ...


class Publisher:
    def __init__(
        self,
        store: EventLog,
        settings: Settings,
        listener: AppendListener | None = None,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._listener = listener
        self._metrics = metrics if metrics is not None else Metrics()
        self._notifier = notifier

    async def publish(
        self,
        channel: str,
        data: JsonValue,
        *,
        event: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Append one event; returns its id once it is durably in the log.

        If the outcome is unknown (a timeout, ``StoreUnavailable``), publish again
        with the same ``idempotency_key``: a repeat within the retention writes
        nothing and returns the original id.
        """
        item: dict[str, Any] = {"data": data} if event is None else {"data": data, "event": event}
        (event_id,) = await self.publish_many(channel, [item], idempotency_key=idempotency_key)
        return event_id

    async def publish_many(
        self,
        channel: str,
        events: Sequence[Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> list[str]:
        """Append ``[{"data": ..., "event": ...}, ...]`` as consecutive ids, all or nothing
        (``idempotency_key`` as for ``publish``)."""
        check_channel(channel)
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
        checked = new_events(
            events,
            max_event_bytes=self._settings.max_event_bytes,
            max_batch_events=self._settings.max_batch_events,
        )
        appended = await self.append(channel, checked, idempotency_key=idempotency_key)
        return [event.event_id for event in appended.events]

    async def history(
        self, channel: str, *, limit: int = DEFAULT_LIMIT, before: str | None = None
    ) -> dict[str, Any]:
        """At most ``limit`` (1-1000) retained events of ``channel`` before the id
        ``before`` (or up to the head), oldest first, as ``GET
        /channels/{channel}/history`` answers: ``{"events": [{"id", "event", "data"}],
        "next_before": id or None}``. A page that renders them and then subscribes
        with ``last_event_id`` = the last id misses nothing published in between."""
        check_channel(channel)
        page = await self._store.history(channel, parse_before(before), check_limit(limit))
        return page.as_dict()

    async def append(
        self, channel: str, events: Sequence[NewEvent], *, idempotency_key: str | None = None
    ) -> Appended:
        """Append already validated events, then wake this process's tail of the channel
        and notify the others (which never fails the append)."""
        started = time.monotonic()
        appended = await self._store.append(channel, events, idempotency_key=idempotency_key)
        if not appended.replayed:  # a repeat stored nothing
            self._metrics.published(len(appended.events), time.monotonic() - started)
            if self._listener is not None:
                self._listener.appended(channel, appended.events)
            if self._notifier is not None:
                await self._notifier.published(channel, appended.events)
        return appended


@asynccontextmanager
async def open_publisher(
    settings: Settings, session: aioboto3.Session | None = None
) -> AsyncIterator[Publisher]:
    notifier = notifier_for(settings)
    try:
        async with open_dynamodb(settings, session) as client:
            store = EventLog.for_settings(client, settings)
            yield Publisher(store, settings, notifier=notifier)
    finally:
        if notifier is not None:
            await notifier.aclose()
