"""An event-stream parser that follows the WHATWG HTML "event stream interpretation"
rules, and an EventSource-like client built on it, for the tests.

It is deliberately independent of ``gateway.wire``: the tests check the
encoder against the specification's parsing rules, not against itself.
"""

from __future__ import annotations

import asyncio
import codecs
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from gateway.cursor import parse_event_id


def seq_of(event_id: str) -> int:
    """The log position of one of the gateway's event ids."""
    position = parse_event_id(event_id)
    assert position is not None, event_id
    return position.seq


@dataclass(frozen=True)
class MessageEvent:
    type: str
    data: str
    last_event_id: str
    received_at: float = 0.0


class EventStreamParser:
    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._started = False
        self._data: list[str] = []
        self._event_type = ""
        self._id_buffer = ""
        self.last_event_id = ""
        self.retry: int | None = None
        self.comments: list[str] = []

    def feed(self, chunk: bytes) -> list[MessageEvent]:
        text = self._pending + self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        events = []
        position = 0
        while True:
            cr, lf = text.find("\r", position), text.find("\n", position)
            ends = [i for i in (cr, lf) if i != -1]
            if not ends:
                break
            end = min(ends)
            if end == cr and end + 1 == len(text):
                break  # a CR at the end might be the first half of a CRLF
            line = text[position:end]
            position = end + (2 if text.startswith("\r\n", end) else 1)
            event = self._line(line)
            if event is not None:
                events.append(event)
        self._pending = text[position:]
        return events

    def _line(self, line: str) -> MessageEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            self.comments.append(line[1:].removeprefix(" "))
            return None
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if name == "event":
            self._event_type = value
        elif name == "data":
            self._data.append(value + "\n")
        elif name == "id":
            if "\0" not in value:
                self._id_buffer = value
        elif name == "retry" and value and all(c in "0123456789" for c in value):
            self.retry = int(value)
        return None

    def _dispatch(self) -> MessageEvent | None:
        self.last_event_id = self._id_buffer
        data = "".join(self._data)
        event_type, self._event_type, self._data = self._event_type, "", []
        if data == "":
            return None
        return MessageEvent(
            event_type or "message", data.removesuffix("\n"), self.last_event_id, time.monotonic()
        )


@dataclass
class Session:
    status: int
    headers: httpx.Headers
    events: list[MessageEvent]
    comments: list[str]
    retry: int | None
    last_event_id: str
    chunks_at: list[float] = field(default_factory=list)


async def read_session(
    client: httpx.AsyncClient,
    url: str,
    *,
    last_event_id: str | None = None,
    stop: Callable[[list[MessageEvent]], bool] | None = None,
    params: dict[str, str] | None = None,
) -> Session:
    """One connection, read until the server closes it (or ``stop`` says enough)."""
    parser = EventStreamParser()
    parser.last_event_id = parser._id_buffer = last_event_id or ""
    headers = {"Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    events: list[MessageEvent] = []
    chunks_at: list[float] = []
    async with client.stream("GET", url, headers=headers, params=params) as response:
        if response.status_code == 200:
            async for chunk in response.aiter_raw():
                chunks_at.append(time.monotonic())
                events.extend(parser.feed(chunk))
                if stop is not None and stop(events):
                    break
        else:
            await response.aread()
    return Session(
        response.status_code,
        response.headers,
        events,
        parser.comments,
        parser.retry,
        parser.last_event_id,
        chunks_at,
    )


class EventSourceClient:
    """Reconnects like the browser's EventSource until ``until`` holds: after a
    session ends it waits ``retry:`` and resumes with ``Last-Event-ID``; a refused
    or cut connection is retried the same way (a non-200 answer is a failure)."""

    def __init__(
        self, client: httpx.AsyncClient, url: str, *, retry_ms: int = 1000, last_event_id: str = ""
    ) -> None:
        self.events: list[MessageEvent] = []
        self.sessions_ended = 0  # the server closed the stream cleanly
        self.network_errors = 0  # refused, reset or cut mid-stream
        self._client = client
        self._url = url
        self._retry_ms = retry_ms
        self._last_event_id = last_event_id  # as an EventSource that has been connected

    async def run(
        self, until: Callable[[list[MessageEvent]], bool], *, max_connections: int = 200
    ) -> list[MessageEvent]:
        for _ in range(max_connections):
            parser = EventStreamParser()
            parser.last_event_id = parser._id_buffer = self._last_event_id
            headers = {"Accept": "text/event-stream"}
            if self._last_event_id:
                headers["Last-Event-ID"] = self._last_event_id
            try:
                async with self._client.stream("GET", self._url, headers=headers) as response:
                    assert response.status_code == 200, response.status_code
                    async for chunk in response.aiter_raw():
                        self.events.extend(parser.feed(chunk))
                        self._last_event_id = parser.last_event_id
                        if until(self.events):
                            return self.events
                self.sessions_ended += 1
            except httpx.TransportError:
                self.network_errors += 1
            self._last_event_id = parser.last_event_id
            self._retry_ms = parser.retry if parser.retry is not None else self._retry_ms
            await asyncio.sleep(self._retry_ms / 1000)
        raise AssertionError(f"gave up after {max_connections} connections")
