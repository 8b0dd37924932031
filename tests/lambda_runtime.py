"""A Lambda Runtime API emulator for the tests, as strict as Lambda's: ``next``,
``response`` (streamed, with trailers), ``error`` and ``init/error`` on a real
port, for a runtime process started by the test.

What Lambda refuses, it refuses with Lambda's status and error type (from the
Runtime API's own code, aws-lambda-runtime-interface-emulator): an outcome for an
unknown invocation, or a second one for the same invocation, ``400
InvalidRequestID``; a ``Lambda-Runtime-Function-Response-Mode`` other than
``streaming`` (absent means buffered), ``400 InvalidFunctionResponseMode``; a
response still streaming at the invocation's deadline is cut with ``410
InvokeTimeout``, and the first outcome after it gets the same; a response past the
size cap (200 MiB streamed, 6 MiB buffered) is cut with ``413``. After its first
6 MiB a streamed response is read no faster than 2 MiB/s, as Lambda throttles it.

Stricter than Lambda where Lambda would accept a runtime's mistake silently: a
trailer not declared in the request's ``Trailer`` header is dropped (RFC 9110
§6.5.1; Go's server, which the Runtime API is, keeps it), an error type that is not
``(Runtime|Function).<Name>`` (which Lambda files as ``Runtime.Unknown``) and an
HTTP integration response sent buffered are violations. Every refusal, every
violation and any error inside the emulator's own connection tasks fails the test
at exit, unless the test took the refusals it provoked (``take_refusals``).

Like Lambda Managed Instances it takes any number of concurrent ``/next`` long
polls (and records how many were waiting at once). On demand it answers the
next ``/next`` or ``/response`` with an error status or drops the connection,
to test a runtime against a Runtime API that fails."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11

SEPARATOR = b"\0" * 8
DROP = 0  # a planned fault that closes the connection instead of answering
HTTP_INTEGRATION = "application/vnd.awslambda.http-integration-response"
MAX_STREAMED_BYTES = 200 * 1024 * 1024
MAX_BUFFERED_BYTES = 6 * 1024 * 1024
UNTHROTTLED_BYTES = 6 * 1024 * 1024
THROTTLED_BYTES_PER_SECOND = 2 * 1024 * 1024
# What the Runtime API accepts as an error type (rapid's GetValidRuntimeOrFunctionErrorType).
ERROR_TYPE = re.compile(r"(Runtime|Function)\.[A-Z][a-zA-Z]+")
ERROR_TYPE_HEADER = "lambda-runtime-function-error-type"
_REFUSALS = {
    400: "InvalidRequestID",
    410: "InvokeTimeout",
    413: "RequestEntityTooLarge",
}


@dataclass
class Outcome:
    kind: str  # "response", "error", or "timeout" (no outcome before the deadline)
    request_id: str
    headers: dict[str, str]
    trace_id: str = ""
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    trailers: dict[str, str] = field(default_factory=dict)  # the declared ones
    undeclared_trailers: dict[str, str] = field(default_factory=dict)  # dropped
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


@dataclass(frozen=True)
class Refusal:
    path: str
    status: int
    error_type: str


@dataclass
class _Invocation:
    deadline: float
    trace_id: str
    future: asyncio.Future[Outcome]
    timer: asyncio.TimerHandle | None = None
    taken: bool = False  # an outcome arrived (or is arriving)
    timed_out: bool = False  # ... or the deadline passed first


class RuntimeAPIEmulator:
    def __init__(self) -> None:
        self.address = ""
        self.init_errors: asyncio.Queue[tuple[dict[str, str], dict[str, Any]]] = asyncio.Queue()
        self.polling = 0  # /next requests waiting right now
        self.most_polling = 0  # ... and the most that ever waited at once
        self.streams_started = 0  # streamed responses whose prelude arrived
        self.payloads_started = 0  # ... and whose first byte of payload arrived
        self.max_streamed_bytes = MAX_STREAMED_BYTES
        self.unthrottled_bytes = UNTHROTTLED_BYTES
        self.throttled_bytes_per_second = THROTTLED_BYTES_PER_SECOND
        self.refusals: list[Refusal] = []
        self.violations: list[str] = []
        self.failures: list[BaseException] = []
        self._changed = asyncio.Condition()
        self._next_faults: list[int] = []
        self._response_faults: list[int] = []
        self._pending: asyncio.Queue[tuple[str, int, Any]] = asyncio.Queue()
        self._invocations: dict[str, _Invocation] = {}
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RuntimeAPIEmulator:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for invocation in self._invocations.values():
            if invocation.timer is not None:
                invocation.timer.cancel()
        if exc_type is not None:
            return  # the test failed already: do not hide why
        if self.failures:
            raise ExceptionGroup("the Runtime API emulator failed", self.failures)
        problems = [f"refused {r}" for r in self.refusals] + self.violations
        assert not problems, f"Lambda would refuse or misfile what the runtime sent: {problems}"

    def take_refusals(self) -> list[Refusal]:
        """The refusals so far, which the test provoked on purpose (and checks)."""
        taken, self.refusals = self.refusals, []
        return taken

    def invoke(
        self, event: Any, timeout_seconds: float, trace_id: str | None = None
    ) -> asyncio.Future[Outcome]:
        """Queue an invocation whose deadline is ``timeout_seconds`` from now; its
        outcome is what the runtime sent, or a ``timeout`` one at the deadline."""
        request_id = str(uuid.uuid4())
        deadline_ms = int((time.time() + timeout_seconds) * 1000)
        loop = asyncio.get_running_loop()
        invocation = _Invocation(
            deadline=time.monotonic() + timeout_seconds,
            trace_id=trace_id or new_trace_id(),
            future=loop.create_future(),
        )
        invocation.timer = loop.call_later(timeout_seconds, self._time_out, request_id)
        self._invocations[request_id] = invocation
        self._pending.put_nowait((request_id, deadline_ms, event))
        return invocation.future

    def fail_next(self, status: int) -> None:
        """The next ``/next`` is answered with ``status`` (or dropped, for ``DROP``)."""
        self._next_faults.append(status)

    def fail_response(self, status: int) -> None:
        """The next ``/response`` is answered with ``status`` once its body is in, or, for
        ``DROP``, its connection is closed once the payload begins."""
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

    def _time_out(self, request_id: str) -> None:
        invocation = self._invocations[request_id]
        if not invocation.taken and not invocation.future.done():
            invocation.timed_out = True
            outcome = Outcome("timeout", request_id, {}, invocation.trace_id)
            outcome.deadline = outcome.finished_at = invocation.deadline
            invocation.future.set_result(outcome)

    def _check_error_type(self, where: str, error_type: str | None) -> None:
        if error_type is None or not ERROR_TYPE.search(error_type):
            self.violations.append(
                f"{where}: error type {error_type!r} is filed as Runtime.Unknown"
            )

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h11.Connection(h11.SERVER)

        async def next_event() -> Any:
            while True:
                event = connection.next_event()
                if event is not h11.NEED_DATA:
                    return event
                connection.receive_data(await reader.read(65536))

        async def respond(
            status: int, body: bytes, headers: tuple[tuple[str, str], ...] = ()
        ) -> None:
            head = [
                *headers,
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
            ]
            writer.write(connection.send(h11.Response(status_code=status, headers=head)))
            writer.write(connection.send(h11.Data(data=body)))
            writer.write(connection.send(h11.EndOfMessage()))
            await writer.drain()

        async def refuse(path: str, status: int, error_type: str) -> None:
            self.refusals.append(Refusal(path, status, error_type))
            body = json.dumps({"errorMessage": error_type, "errorType": error_type}).encode()
            await respond(status, body)
            # As Go's server does: stop sending, keep reading until the runtime closes,
            # so the refusal is read rather than lost to a reset connection.
            writer.write_eof()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    while await reader.read(65536):
                        pass

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
                        await respond(fault, b'{"errorMessage":"planned fault"}')
                    return
                await self._answer_next(respond)
            elif parts[2:3] == ["invocation"] and parts[-1] in ("response", "error"):
                refused = self._refusal(parts[3], parts[-1], headers)
                if refused is not None:
                    await refuse(target, *refused)
                    return
                await self._take_outcome(parts[3], parts[-1], headers, next_event, respond, refuse)
            elif target.endswith("/init/error"):
                self._check_error_type("init/error", headers.get(ERROR_TYPE_HEADER))
                body = bytearray()
                while isinstance(event := await next_event(), h11.Data):
                    body += event.data
                await respond(202, b'{"status":"OK"}')
                self.init_errors.put_nowait((headers, json.loads(body)))
            else:
                await respond(404, b"{}")
        except (OSError, h11.RemoteProtocolError, asyncio.IncompleteReadError):
            pass  # the runtime hung up or broke its side of HTTP: the outcome shows it
        except asyncio.CancelledError:
            pass  # the emulator is shutting down with a runtime still waiting for work
        except Exception as exc:  # the emulator's own mistake: the test must fail
            self.failures.append(exc)
        finally:
            writer.close()

    def _refusal(
        self, request_id: str, kind: str, headers: dict[str, str]
    ) -> tuple[int, str] | None:
        """The status and error type Lambda refuses this outcome with, or None to take it."""
        invocation = self._invocations.get(request_id)
        if invocation is None or invocation.taken:
            return 400, _REFUSALS[400]
        invocation.taken = True
        if invocation.timed_out:
            return 410, _REFUSALS[410]
        mode = headers.get("lambda-runtime-function-response-mode", "buffered")
        if kind == "response" and mode not in ("streaming", "buffered"):
            return 400, "InvalidFunctionResponseMode"
        if kind == "response" and mode == "buffered" and _is_integration(headers):
            self.violations.append(f"{request_id}: an HTTP integration response sent buffered")
        if kind == "error":
            self._check_error_type(f"{request_id}/error", headers.get(ERROR_TYPE_HEADER))
        return None

    async def _answer_next(self, respond: Any) -> None:
        await self._count(polling=1)
        try:
            request_id, deadline_ms, event = await self._pending.get()
        finally:
            await self._count(polling=-1)
        await respond(
            200,
            json.dumps(event).encode(),
            (
                ("Lambda-Runtime-Aws-Request-Id", request_id),
                ("Lambda-Runtime-Deadline-Ms", str(deadline_ms)),
                ("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:0:function:sub"),
                ("Lambda-Runtime-Trace-Id", self._invocations[request_id].trace_id),
            ),
        )

    async def _take_outcome(
        self,
        request_id: str,
        kind: str,
        headers: dict[str, str],
        next_event: Any,
        respond: Any,
        refuse: Any,
    ) -> None:
        invocation = self._invocations[request_id]
        outcome = Outcome(kind, request_id, headers, invocation.trace_id)
        outcome.deadline = invocation.deadline
        streamed = headers.get("lambda-runtime-function-response-mode") == "streaming"
        cap = self.max_streamed_bytes if streamed else MAX_BUFFERED_BYTES
        if kind == "response":
            await self._count(streams=1)
            outcome.answered = self._response_faults.pop(0) if self._response_faults else 202
        received, throttled_since = 0, 0.0
        try:
            async with asyncio.timeout(invocation.deadline - time.monotonic()) as deadline:
                while True:
                    event = await next_event()
                    if isinstance(event, h11.Data):
                        had_payload = kind == "response" and bool(outcome.payload)
                        outcome.chunks.append((time.monotonic(), bytes(event.data)))
                        received += len(event.data)
                        if kind == "response" and not had_payload and outcome.payload:
                            await self._count(payloads=1)
                            if outcome.answered == DROP:
                                return
                        if received > cap:
                            outcome.answered = 413
                            break
                        if streamed and received > self.unthrottled_bytes:
                            throttled_since = throttled_since or time.monotonic()
                            beyond = received - self.unthrottled_bytes
                            due = throttled_since + beyond / self.throttled_bytes_per_second
                            await asyncio.sleep(due - time.monotonic())
                    elif isinstance(event, h11.EndOfMessage):
                        self._take_trailers(outcome, headers, event.headers)
                        break
        except TimeoutError:
            if not deadline.expired():
                raise
            outcome.answered = 410  # Lambda stops reading a response at the deadline
        finally:
            outcome.finished_at = time.monotonic()
            if not invocation.future.done():  # a test that gave up waiting cancelled it
                invocation.future.set_result(outcome)
        if outcome.answered in _REFUSALS:
            path = f"/2018-06-01/runtime/invocation/{request_id}/{kind}"
            await refuse(path, outcome.answered, _REFUSALS[outcome.answered])
            return
        answer = b'{"status":"OK"}' if outcome.answered == 202 else b'{"errorMessage":"fault"}'
        await respond(outcome.answered, answer)

    def _take_trailers(
        self, outcome: Outcome, headers: dict[str, str], trailers: list[tuple[bytes, bytes]]
    ) -> None:
        declared = {name.strip().lower() for name in headers.get("trailer", "").split(",")}
        for name, value in ((k.decode().lower(), v.decode()) for k, v in trailers):
            kept = outcome.trailers if name in declared else outcome.undeclared_trailers
            kept[name] = value
        if ERROR_TYPE_HEADER in outcome.trailers:
            self._check_error_type(
                f"{outcome.request_id} trailer", outcome.trailers[ERROR_TYPE_HEADER]
            )


def _is_integration(headers: dict[str, str]) -> bool:
    return headers.get("content-type", "").startswith(HTTP_INTEGRATION)


def new_trace_id() -> str:
    """An X-Ray trace header as Lambda sends it, unique per call."""
    root = f"1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}"
    return f"Root={root};Parent={uuid.uuid4().hex[:16]};Sampled=1"
