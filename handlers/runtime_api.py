"""A client for the Lambda Runtime API, with streamed responses.

Hand-written on HTTP/1.1 framing from h11 because no maintained Python client
covers what a streaming runtime needs: a chunked request body written as the
app produces it, and HTTP trailers to report an error after the first byte
(``Lambda-Runtime-Function-Error-Type`` / ``-Body``). The Runtime API listens on
a loopback address, one request per connection keeps this small, and lets many
invocations (Lambda Managed Instances) each hold a connection of their own.

Each exchange reads its connection from the moment its request is sent: the
Runtime API may answer a streamed response before the runtime has finished it
(``413`` past the size cap, ``410`` at the deadline) or close it, and a stream
that learns of it only at its next write could go on for a heartbeat (15 s) in
vain. ``ResponseStream.on_cut_short`` reports it at once, so the session ends.

Every failure of an exchange, an answer other than the expected status or a
connection that breaks, is a ``RuntimeAPIError``: the loop that serves
invocations catches that one type, logs it and goes on.

Error types follow the Runtime API's rule, ``(Runtime|Function).<Name>``;
Lambda files any other as ``Runtime.Unknown``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11

API_VERSION = "2018-06-01"
STREAMING_CONTENT_TYPE = "application/vnd.awslambda.http-integration-response"
ERROR_TYPE_TRAILER = "Lambda-Runtime-Function-Error-Type"
ERROR_BODY_TRAILER = "Lambda-Runtime-Function-Error-Body"
STREAM_ERROR_TYPE = "Runtime.StreamError"


class RuntimeAPIError(Exception):
    """The Runtime API answered something a runtime cannot go on from."""


@dataclass(frozen=True, slots=True)
class Invocation:
    request_id: str
    deadline_ms: int
    event: Any
    trace_id: str | None = None  # Lambda-Runtime-Trace-Id, the X-Ray trace header


def function_error_type(exc: BaseException) -> str:
    """``Function.<the exception's class name>``, kept to the letters Lambda accepts."""
    name = "".join(c for c in type(exc).__name__ if c.isascii() and c.isalpha())
    return f"Function.{name[0].upper()}{name[1:]}" if len(name) > 1 else "Function.Unhandled"


def error_payload(exc: BaseException, error_type: str) -> dict[str, Any]:
    return {
        "errorMessage": str(exc),
        "errorType": error_type,
        "stackTrace": traceback.format_exception(exc),
    }


class _Exchange:
    """One HTTP/1.1 request on its own connection, whose answer is read as soon as
    the request is sent (``answer``), however long the request body goes on."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._connection = h11.Connection(h11.CLIENT)
        self.answer: asyncio.Task[tuple[int, dict[str, str], bytes]] | None = None

    @classmethod
    async def start(
        cls, address: str, method: str, target: str, headers: list[tuple[str, str]]
    ) -> _Exchange:
        host, _, port = address.rpartition(":")
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
        except OSError as exc:
            raise RuntimeAPIError(f"cannot reach the Runtime API at {address}: {exc}") from exc
        exchange = cls(reader, writer)
        request = h11.Request(method=method, target=target, headers=[("Host", address), *headers])
        await exchange._send(request)
        exchange.answer = asyncio.create_task(exchange._read_answer())
        return exchange

    async def _send(self, event: h11.Event) -> None:
        try:
            data = self._connection.send(event)
            if data:
                self._writer.write(data)
                await self._writer.drain()
        except (OSError, h11.ProtocolError) as exc:
            self._writer.close()  # the answer's reader then sees the end
            raise RuntimeAPIError(f"the Runtime API connection broke: {exc}") from exc

    async def _read_answer(self) -> tuple[int, dict[str, str], bytes]:
        status, headers, body = 0, {}, bytearray()
        try:
            while True:
                event = self._connection.next_event()
                if event is h11.NEED_DATA:
                    self._connection.receive_data(await self._reader.read(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    return status, headers, bytes(body)
                elif isinstance(event, h11.ConnectionClosed):
                    raise RuntimeAPIError("the Runtime API connection broke: closed, no answer")
        except (OSError, h11.ProtocolError) as exc:
            raise RuntimeAPIError(f"the Runtime API connection broke: {exc}") from exc

    async def write(self, data: bytes) -> None:
        if data:
            await self._send(h11.Data(data=data))

    async def finish(
        self, trailers: list[tuple[str, str]] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """End the request body (with ``trailers``) and wait for the whole answer."""
        assert self.answer is not None
        try:
            if not self.answer.done():
                await self._send(h11.EndOfMessage(headers=trailers or []))
            return await self.answer
        finally:
            self.close()

    def close(self) -> None:
        if self.answer is not None:
            self.answer.cancel()
        self._writer.close()


class RuntimeAPI:
    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"the Runtime API address must be host:port, not {address!r}")
        self._address = address
        self._base = f"/{API_VERSION}/runtime"

    async def next_invocation(self) -> Invocation:
        """Wait for the next invocation (a long poll: it returns when there is one)."""
        exchange = await _Exchange.start(self._address, "GET", f"{self._base}/invocation/next", [])
        status, headers, body = await exchange.finish()
        if status != 200:
            raise RuntimeAPIError(f"next invocation answered {status}: {body[:200]!r}")
        try:
            return Invocation(
                request_id=headers["lambda-runtime-aws-request-id"],
                deadline_ms=int(headers["lambda-runtime-deadline-ms"]),
                event=json.loads(body),
                trace_id=headers.get("lambda-runtime-trace-id"),
            )
        except (KeyError, ValueError) as exc:
            raise RuntimeAPIError(f"malformed invocation from the Runtime API: {exc}") from exc

    async def start_stream(self, request_id: str, prelude: bytes) -> ResponseStream:
        """Open the streamed response: the HTTP integration prelude goes first."""
        exchange = await _Exchange.start(
            self._address,
            "POST",
            f"{self._base}/invocation/{request_id}/response",
            [
                ("Lambda-Runtime-Function-Response-Mode", "streaming"),
                ("Transfer-Encoding", "chunked"),
                ("Content-Type", STREAMING_CONTENT_TYPE),
                ("Trailer", f"{ERROR_TYPE_TRAILER}, {ERROR_BODY_TRAILER}"),
            ],
        )
        try:
            await exchange.write(prelude)
        except RuntimeAPIError:
            exchange.close()
            raise
        return ResponseStream(exchange)

    async def invocation_error(self, request_id: str, exc: BaseException) -> None:
        await self._post_error(f"/invocation/{request_id}/error", exc, function_error_type(exc))

    async def init_error(self, exc: BaseException, error_type: str) -> None:
        """Report a failed start, ``error_type`` being ``Runtime.<Name>``."""
        await self._post_error("/init/error", exc, error_type)

    async def _post_error(self, path: str, exc: BaseException, error_type: str) -> None:
        payload = error_payload(exc, error_type)
        body = json.dumps(payload).encode()
        exchange = await _Exchange.start(
            self._address,
            "POST",
            self._base + path,
            [
                (ERROR_TYPE_TRAILER, payload["errorType"]),
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
            ],
        )
        await exchange.write(body)
        status, _, answer = await exchange.finish()
        if status != 202:
            raise RuntimeAPIError(f"error report answered {status}: {answer[:200]!r}")


class ResponseStream:
    def __init__(self, exchange: _Exchange) -> None:
        assert exchange.answer is not None
        self._exchange = exchange
        self._answer = exchange.answer
        self._broken = False  # a write failed
        self._finished = False

    def on_cut_short(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` as soon as the Runtime API answers or closes the connection
        before ``finish``: it refused the response or cut it short."""
        self._answer.add_done_callback(lambda _: None if self._finished else callback())

    async def write(self, data: bytes) -> None:
        if self._answer.done():
            raise RuntimeAPIError("the Runtime API ended the streamed response early")
        try:
            await self._exchange.write(data)
        except RuntimeAPIError:
            self._broken = True
            raise

    async def finish(self, error: BaseException | None = None) -> None:
        """End the response; an ``error`` after the first byte travels in the trailers.

        Only the first call sends anything: a response is ended once. A response the
        Runtime API refused or cut short, or a broken one, raises ``RuntimeAPIError``.
        """
        if self._finished:
            return
        self._finished = True
        cut_short = self._broken or self._answer.done()
        trailers = []
        if error is not None:
            body = json.dumps(error_payload(error, STREAM_ERROR_TYPE)).encode()
            trailers = [
                (ERROR_TYPE_TRAILER, STREAM_ERROR_TYPE),
                (ERROR_BODY_TRAILER, base64.b64encode(body).decode()),
            ]
        status, _, body = await self._exchange.finish(trailers)
        if cut_short or status != 202:
            raise RuntimeAPIError(f"streamed response answered {status}: {body[:200]!r}")
