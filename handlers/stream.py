"""The subscribe function: a Lambda runtime loop that streams the gateway's responses.

Python's managed runtime cannot stream a response and Mangum buffers the whole
body, so an SSE route behind either sends nothing until the session ends. This
module replaces the runtime's loop (through ``AWS_LAMBDA_EXEC_WRAPPER``, see
``handlers/bootstrap``): it takes invocations from the Runtime API, runs each
as an ASGI request against the gateway app, and writes every body chunk to the
streamed response the moment the app sends it.

The settings, the DynamoDB client and the app are built once per execution
environment. On Lambda Managed Instances (``AWS_LAMBDA_MAX_CONCURRENCY`` set)
that many workers, asyncio tasks of one process, each long-poll
``/invocation/next`` and serve their invocations concurrently; all of them
share the one app, so N connections to a channel share one tail loop and cost
one query per poll. AWS's own Python runtime serves that mode with a process
per concurrent request, which could share nothing.

A worker never dies of an invocation: whatever fails is reported where the
Runtime API still takes it, logged with the request id, and the worker takes
the next one. Nothing stops code at the deadline on Managed Instances, so an
invocation that outlives its deadline is cancelled here; a response the Runtime
API cuts short (past the size cap, at the deadline) is the app's disconnect, so
the session ends at once. Each invocation's DynamoDB calls carry its trace id
(``handlers/tracing.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from contextlib import AsyncExitStack
from typing import Any, NoReturn

from gateway.app import create_app
from gateway.dynamodb import open_dynamodb
from gateway.errors import SettingsError
from gateway.metrics import metrics_for
from gateway.redaction import redact_target
from gateway.settings import RUNTIME_API_VARIABLE, load_settings, runtime_api_address
from gateway.store import EventLog
from handlers.emf import EmfReporter
from handlers.function_url import InvalidEvent, prelude, to_asgi
from handlers.logs import log_json_lines, request_id
from handlers.runtime_api import Invocation, ResponseStream, RuntimeAPI, RuntimeAPIError
from handlers.tracing import trace_calls, trace_id

logger = logging.getLogger("sse_gateway.lambda")

ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[MutableMapping[str, Any]]],
        Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]

# A failed /next is retried after this long, doubling up to the maximum.
NEXT_RETRY_SECONDS = 0.05
NEXT_RETRY_MAX_SECONDS = 2.0


class _AsgiInvocation:
    """One invocation as one ASGI HTTP request; the response streams as it is sent."""

    def __init__(self, runtime: RuntimeAPI, request_id: str, body: bytes) -> None:
        self._runtime = runtime
        self._request_id = request_id
        self._body: bytes | None = body
        self.status = 500
        self.stream: ResponseStream | None = None
        # The response is over: finished, or ended by the Runtime API (a 413 past the
        # size cap, 410 at the deadline, a closed connection) while the app still sends.
        self.gone = asyncio.Event()

    async def receive(self) -> MutableMapping[str, Any]:
        if self._body is not None:
            body, self._body = self._body, None
            return {"type": "http.request", "body": body, "more_body": False}
        # A streamed function URL never learns that its client left; the Runtime API
        # ending the response is the only disconnect there is.
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            # The status and headers go out at once, as an HTTP server sends them: a
            # resumed session may have no byte of body to send for a while.
            self.status = int(message["status"])
            self.stream = await self._runtime.start_stream(
                self._request_id, prelude(self.status, message.get("headers", []))
            )
            self.stream.on_cut_short(self.gone.set)
        elif message["type"] == "http.response.body" and not self.gone.is_set():
            if self.stream is None:
                raise RuntimeError("the app sent a body before http.response.start")
            await self.stream.write(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                await self.stream.finish()
                # Only now may receive() report a disconnect: Starlette cancels the
                # response task when it sees one, which must not cut the finish short.
                self.gone.set()


def session_deadline(invocation: Invocation, margin_seconds: float) -> float:
    """The invocation's deadline on ``time.monotonic``, less a margin to say goodbye."""
    return _remaining_seconds(invocation) + time.monotonic() - margin_seconds


def _remaining_seconds(invocation: Invocation) -> float:
    return invocation.deadline_ms / 1000 - time.time()


def _target(scope: MutableMapping[str, Any]) -> str:
    query = scope["query_string"].decode("latin-1")
    raw = scope["raw_path"].decode("latin-1") + (f"?{query}" if query else "")
    return redact_target(raw)


async def handle_invocation(
    runtime: RuntimeAPI, app: ASGIApp, invocation: Invocation, margin_seconds: float
) -> None:
    """Serve one invocation. A failure is reported to the Runtime API while it still
    takes one (the error endpoint before the response starts, trailers after); what
    cannot be reported any more raises ``RuntimeAPIError``."""
    try:
        scope, body = to_asgi(
            invocation.event, deadline=session_deadline(invocation, margin_seconds)
        )
    except InvalidEvent as exc:
        logger.warning("refused the invocation: %s", exc)
        await runtime.invocation_error(invocation.request_id, exc)
        return
    asgi = _AsgiInvocation(runtime, invocation.request_id, body)
    target = f"{scope['method']} {_target(scope)}"
    guard = asyncio.timeout(_remaining_seconds(invocation))
    try:
        async with guard:
            await app(scope, asgi.receive, asgi.send)
        if asgi.stream is None:
            raise RuntimeError("the app returned without sending a response")
        await asgi.stream.finish()
    except Exception as exc:
        error = TimeoutError("the invocation ran past its deadline") if guard.expired() else exc
        logger.error("%s failed: %s", target, error, exc_info=exc)
        if asgi.stream is None:
            await runtime.invocation_error(invocation.request_id, error)
        else:
            await asgi.stream.finish(error=error)  # raises if it broke or was cut short
        return
    logger.info("%s %d", target, asgi.status)


async def _worker(
    runtime: RuntimeAPI, app: ASGIApp, margin_seconds: float, finished: Callable[[], None]
) -> NoReturn:
    retry_in = NEXT_RETRY_SECONDS
    while True:
        try:
            invocation = await runtime.next_invocation()
        except RuntimeAPIError as exc:
            logger.warning("no next invocation (%s); asking again in %.2f s", exc, retry_in)
            await asyncio.sleep(retry_in)
            retry_in = min(retry_in * 2, NEXT_RETRY_MAX_SECONDS)
            continue
        retry_in = NEXT_RETRY_SECONDS
        token = request_id.set(invocation.request_id)
        trace = trace_id.set(invocation.trace_id)
        try:
            await handle_invocation(runtime, app, invocation, margin_seconds)
        except Exception:
            logger.exception("the invocation's outcome could not be sent to the Runtime API")
        finally:
            finished()  # before /next, which may freeze the environment for good
            trace_id.reset(trace)
            request_id.reset(token)


async def serve_invocations(
    runtime: RuntimeAPI,
    app: ASGIApp,
    margin_seconds: float,
    workers: int = 1,
    reporter: EmfReporter | None = None,
) -> None:
    """Serve invocations forever, ``workers`` at a time, all on the one ``app``; the
    ``reporter`` flushes the metrics after each invocation and every minute."""
    finished = reporter.flush if reporter is not None else lambda: None
    async with asyncio.TaskGroup() as group:
        if reporter is not None:
            group.create_task(reporter.run(), name="metrics")
        for number in range(workers):
            worker = _worker(runtime, app, margin_seconds, finished)
            group.create_task(worker, name=f"worker-{number}")


async def _fail_start(address: str | None, exc: Exception, error_type: str) -> NoReturn:
    logger.error("start-up failed: %s", exc, exc_info=exc)
    if address is not None:
        try:
            await RuntimeAPI(address).init_error(exc, error_type)
        except (RuntimeAPIError, ValueError) as report:
            logger.error("could not report the start-up failure: %s", report)
    raise SystemExit(1) from exc


async def run(runtime_api: str | None) -> None:
    try:
        settings = load_settings()
    except SettingsError as exc:
        await _fail_start(runtime_api or runtime_api_address(), exc, "Runtime.ConfigurationError")
    address = runtime_api or settings.lambda_runtime_api
    if address is None:
        missing = SettingsError(f"set {RUNTIME_API_VARIABLE} (Lambda does) or pass --runtime-api")
        await _fail_start(None, missing, "Runtime.ConfigurationError")
    async with AsyncExitStack() as stack:
        try:
            runtime = RuntimeAPI(address)
            client = await stack.enter_async_context(open_dynamodb(settings))
            trace_calls(client)
            metrics = metrics_for(settings)
            store = EventLog.for_settings(client, settings, metrics=metrics)
            app = create_app(settings, store, publish=False, metrics=metrics, metrics_route=False)
            reporter = EmfReporter(metrics, sys.stdout, function=settings.lambda_function_name)
        except SettingsError as exc:  # no region or credentials: what to set
            await _fail_start(address, exc, "Runtime.ConfigurationError")
        except Exception as exc:
            await _fail_start(address, exc, "Runtime.InitError")
        logger.info("serving %d invocation(s) at a time", settings.lambda_max_concurrency)
        await serve_invocations(
            runtime,
            app,
            settings.lambda_deadline_margin_seconds,
            settings.lambda_max_concurrency,
            reporter,
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m handlers.stream", description=__doc__)
    parser.add_argument(
        "--runtime-api", help=f"host:port of the Runtime API (default: ${RUNTIME_API_VARIABLE})"
    )
    args = parser.parse_args(argv)
    log_json_lines(sys.stderr)
    asyncio.run(run(args.runtime_api))


def handler(event: Any, context: Any) -> None:
    """Reached only when the exec wrapper is missing: say how to configure the function."""
    raise RuntimeError(
        "the subscribe function streams through its own runtime loop: set "
        "AWS_LAMBDA_EXEC_WRAPPER=/var/task/handlers/bootstrap on this function"
    )


if __name__ == "__main__":
    main()
