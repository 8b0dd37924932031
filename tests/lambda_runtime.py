"""A Lambda Runtime API emulator for the tests: ``next``, ``response`` (chunked and
streamed, with trailers), ``error`` and ``init/error`` as AWS documents them, on a
real port, for a runtime process started by the test."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import h11

SEPARATOR = b"\0" * 8


@dataclass
class Outcome:
    kind: str  # "response" or "error"
    headers: dict[str, str]
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    trailers: dict[str, str] = field(default_factory=dict)
    finished_at: float = 0.0
    deadline: float = 0.0  # time.monotonic() of the invocation's deadline

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
            target = request.target.decode()
            headers = {k.decode().lower(): v.decode() for k, v in request.headers}
            parts = target.strip("/").split("/")  # 2018-06-01/runtime/...
            if target.endswith("/invocation/next"):
                request_id, deadline_ms, event = await self._pending.get()
                await next_event()
                await respond(
                    200,
                    [
                        ("Lambda-Runtime-Aws-Request-Id", request_id),
                        ("Lambda-Runtime-Deadline-Ms", str(deadline_ms)),
                        (
                            "Lambda-Runtime-Invoked-Function-Arn",
                            "arn:aws:lambda:us-east-1:0:function:sub",
                        ),
                        ("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000"),
                        ("Content-Type", "application/json"),
                    ],
                    json.dumps(event).encode(),
                )
            elif parts[2:3] == ["invocation"] and parts[-1] in ("response", "error"):
                request_id = parts[3]
                outcome = Outcome(parts[-1], headers, deadline=self._deadlines[request_id])
                while True:
                    event = await next_event()
                    if isinstance(event, h11.Data):
                        outcome.chunks.append((time.monotonic(), bytes(event.data)))
                    elif isinstance(event, h11.EndOfMessage):
                        outcome.trailers = {
                            k.decode().lower(): v.decode() for k, v in event.headers
                        }
                        break
                outcome.finished_at = time.monotonic()
                await respond(202, [], b'{"status":"OK"}')
                self._outcomes.pop(request_id).set_result(outcome)
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
