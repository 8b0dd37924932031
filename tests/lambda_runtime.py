"""A Lambda Runtime API emulator for the tests: ``next``, ``response`` (chunked and
streamed, with trailers), ``error`` and ``init/error`` as AWS documents them, on a
real port, for a runtime process started by the test.

Like Lambda Managed Instances it takes any number of concurrent ``/next`` long
polls (and records how many were waiting at once). On demand it answers the
next ``/next`` or ``/response`` with an error status or drops the connection,
to test a runtime against a Runtime API that fails."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11

SEPARATOR = b"\0" * 8
DROP = 0  # a planned fault that closes the connection instead of answering


@dataclass
class Outcome:
    kind: str  # "response" or "error"
    request_id: str
    headers: dict[str, str]
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    trailers: dict[str, str] = field(default_factory=dict)
    finished_at: float = 0.0
    deadline: float = 0.0  # time.monotonic() of the invocation's deadline
    answered: int = 202  # the status the emulator answered with; DROP if it hung up

    @property
    def body(self) -> bytes:
        return b"".join(chunk for _, chunk in self.chunks)

    @property
    def prelude(self) -> dict[str, Any]:
        head, separator, _ = self.body.partition(SEPARATOR)
        assert separator == SEPARATOR, "no 8-NUL separator after the prelude"
        document: dict[str, Any] = json.loads(head)
        return document

    @property
    def payload(self) -> bytes:
        return self.body.partition(SEPARATOR)[2]

    def payload_arrivals(self) -> list[float]:
        """Arrival time of each chunk that carried response body bytes."""
        arrivals, seen = [], 0
        prelude_end = self.body.index(SEPARATOR) + len(SEPARATOR)
        for at, chunk in self.chunks:
            seen += len(chunk)
            if seen > prelude_end and chunk:
                arrivals.append(at)
        return arrivals


class RuntimeAPIEmulator:
    def __init__(self) -> None:
        self.address = ""
        self.init_errors: asyncio.Queue[tuple[dict[str, str], dict[str, Any]]] = asyncio.Queue()
        self.polling = 0  # /next requests waiting right now
        self.most_polling = 0  # ... and the most that ever waited at once
        self.streams_started = 0  # streamed responses whose prelude arrived
        self.payloads_started = 0  # ... and whose first byte of payload arrived
        self._changed = asyncio.Condition()
        self._next_faults: list[int] = []
        self._response_faults: list[int] = []
        self._pending: asyncio.Queue[tuple[str, int, Any]] = asyncio.Queue()
        self._outcomes: dict[str, asyncio.Future[Outcome]] = {}
        self._deadlines: dict[str, float] = {}
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RuntimeAPIEmulator:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    def invoke(self, event: Any, timeout_seconds: float) -> asyncio.Future[Outcome]:
        """Queue an invocation whose deadline is ``timeout_seconds`` from now."""
        request_id = str(uuid.uuid4())
        deadline_ms = int((time.time() + timeout_seconds) * 1000)
        self._deadlines[request_id] = time.monotonic() + timeout_seconds
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._outcomes[request_id] = future
        self._pending.put_nowait((request_id, deadline_ms, event))
        return future

    def fail_next(self, status: int) -> None:
        """The next ``/next`` is answered with ``status`` (or dropped, for ``DROP``)."""
        self._next_faults.append(status)

    def fail_response(self, status: int) -> None:
        """The next ``/response`` is answered with ``status`` once its body is in, or, for
        ``DROP``, its connection is closed after the first chunk."""
        self._response_faults.append(status)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Until ``predicate`` holds, checked whenever one of the counters changes."""
        async with self._changed:
            await self._changed.wait_for(predicate)

    async def _count(self, polling: int = 0, streams: int = 0, payloads: int = 0) -> None:
        async with self._changed:
            self.polling += polling
            self.most_polling = max(self.most_polling, self.polling)
            self.streams_started += streams
            self.payloads_started += payloads
            self._changed.notify_all()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h11.Connection(h11.SERVER)

        async def next_event() -> Any:
            while True:
                event = connection.next_event()
                if event is not h11.NEED_DATA:
                    return event
                connection.receive_data(await reader.read(65536))

        async def respond(status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            headers = [*headers, ("Content-Length", str(len(body)))]
            writer.write(connection.send(h11.Response(status_code=status, headers=headers)))
            writer.write(connection.send(h11.Data(data=body)))
            writer.write(connection.send(h11.EndOfMessage()))
            await writer.drain()

        try:
            request = await next_event()
            if not isinstance(request, h11.Request):
                return  # a runtime stopped before it sent its request
            target = request.target.decode()
            headers = {k.decode().lower(): v.decode() for k, v in request.headers}
            parts = target.strip("/").split("/")  # 2018-06-01/runtime/...
            if target.endswith("/invocation/next"):
                await next_event()
                if self._next_faults:
                    fault = self._next_faults.pop(0)
                    if fault != DROP:
                        await respond(fault, [], b'{"errorMessage":"planned fault"}')
                    return
                await self._answer_next(respond)
            elif parts[2:3] == ["invocation"] and parts[-1] in ("response", "error"):
                await self._take_outcome(parts[3], parts[-1], headers, next_event, respond)
            elif target.endswith("/init/error"):
                body = bytearray()
                while isinstance(event := await next_event(), h11.Data):
                    body += event.data
                await respond(202, [], b'{"status":"OK"}')
                self.init_errors.put_nowait((headers, json.loads(body)))
            else:
                await respond(404, [], b"{}")
        except (OSError, h11.RemoteProtocolError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the emulator is shutting down with a runtime still waiting for work
        finally:
            writer.close()

    async def _answer_next(self, respond: Any) -> None:
        await self._count(polling=1)
        try:
            request_id, deadline_ms, event = await self._pending.get()
        finally:
            await self._count(polling=-1)
        await respond(
            200,
            [
                ("Lambda-Runtime-Aws-Request-Id", request_id),
                ("Lambda-Runtime-Deadline-Ms", str(deadline_ms)),
                ("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:0:function:sub"),
                ("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000"),
                ("Content-Type", "application/json"),
            ],
            json.dumps(event).encode(),
        )

    async def _take_outcome(
        self, request_id: str, kind: str, headers: dict[str, str], next_event: Any, respond: Any
    ) -> None:
        outcome = Outcome(kind, request_id, headers, deadline=self._deadlines[request_id])
        if kind == "response":
            await self._count(streams=1)
            outcome.answered = self._response_faults.pop(0) if self._response_faults else 202
        try:
            while True:
                event = await next_event()
                if isinstance(event, h11.Data):
                    had_payload = kind == "response" and bool(outcome.payload)
                    outcome.chunks.append((time.monotonic(), bytes(event.data)))
                    if kind == "response" and not had_payload and outcome.payload:
                        await self._count(payloads=1)
                    if outcome.answered == DROP:
                        return
                elif isinstance(event, h11.EndOfMessage):
                    outcome.trailers = {k.decode().lower(): v.decode() for k, v in event.headers}
                    break
            answer = b'{"status":"OK"}' if outcome.answered == 202 else b'{"errorMessage":"fault"}'
            await respond(outcome.answered, [], answer)
        finally:
            outcome.finished_at = time.monotonic()
            future = self._outcomes.pop(request_id, None)
            if future is None:
                raise AssertionError(f"a second {kind} for invocation {request_id}")
            future.set_result(outcome)
