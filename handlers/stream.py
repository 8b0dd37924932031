"""The subscribe function: a Lambda runtime loop that streams the gateway's responses.

Python's managed runtime cannot stream a response and Mangum buffers the whole
body, so an SSE route behind either sends nothing until the session ends. This
module replaces the runtime's loop (through ``AWS_LAMBDA_EXEC_WRAPPER``, see
``handlers/bootstrap``): it takes invocations from the Runtime API, runs each
as an ASGI request against the gateway app, and writes every body chunk to the
streamed response the moment the app sends it.

The settings, the DynamoDB client and the app are built once per execution
environment; one process serves invocation after invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

from gateway.app import create_app
from gateway.dynamodb import open_dynamodb
from gateway.errors import SettingsError
from gateway.settings import load_settings
from gateway.store import EventLog
from handlers.function_url import prelude, to_asgi
from handlers.runtime_api import Invocation, ResponseStream, RuntimeAPI

logger = logging.getLogger("sse_gateway.lambda")

ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[MutableMapping[str, Any]]],
        Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]


class _AsgiInvocation:
    """One invocation as one ASGI HTTP request; the response streams as it is sent."""

    def __init__(self, runtime: RuntimeAPI, request_id: str, body: bytes) -> None:
        self._runtime = runtime
        self._request_id = request_id
        self._body: bytes | None = body
        self._status = 500
        self._headers: list[tuple[bytes, bytes]] = []
        self.stream: ResponseStream | None = None
        self.finished = asyncio.Event()

    async def receive(self) -> MutableMapping[str, Any]:
        if self._body is not None:
            body, self._body = self._body, None
            return {"type": "http.request", "body": body, "more_body": False}
        # A streamed function URL never learns that its client left: the request
        # stays open until the response is complete.
        await self.finished.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self._status = int(message["status"])
            self._headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body" and not self.finished.is_set():
            if self.stream is None:
                self.stream = await self._runtime.start_stream(
                    self._request_id, prelude(self._status, self._headers)
                )
            await self.stream.write(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                await self.stream.finish()
                # Only now may receive() report a disconnect: Starlette cancels the
                # response task when it sees one, which must not cut the finish short.
                self.finished.set()


def session_deadline(invocation: Invocation, margin_seconds: float) -> float:
    """The invocation's deadline on ``time.monotonic``, less a margin to say goodbye."""
    remaining = invocation.deadline_ms / 1000 - time.time()
    return time.monotonic() + remaining - margin_seconds


async def handle_invocation(
    runtime: RuntimeAPI, app: ASGIApp, invocation: Invocation, margin_seconds: float
) -> None:
    try:
        scope, body = to_asgi(
            invocation.event, deadline=session_deadline(invocation, margin_seconds)
        )
    except ValueError as exc:
        await runtime.invocation_error(invocation.request_id, exc)
        return
    asgi = _AsgiInvocation(runtime, invocation.request_id, body)
    try:
        await app(scope, asgi.receive, asgi.send)
        if asgi.stream is None:
            raise RuntimeError("the app returned without sending a response")
    except Exception as exc:
        logger.exception("invocation %s failed", invocation.request_id)
        if asgi.stream is None:
            await runtime.invocation_error(invocation.request_id, exc)
        elif not asgi.finished.is_set():
            await asgi.stream.finish(error=exc)
        return
    if not asgi.finished.is_set():
        await asgi.stream.finish()


async def serve_invocations(runtime: RuntimeAPI, app: ASGIApp, margin_seconds: float) -> None:
    while True:
        invocation = await runtime.next_invocation()
        await handle_invocation(runtime, app, invocation, margin_seconds)


async def run(runtime_api: str) -> None:
    runtime = RuntimeAPI(runtime_api)
    async with AsyncExitStack() as stack:
        try:
            settings = load_settings()
            client = await stack.enter_async_context(open_dynamodb(settings))
            store = EventLog.for_settings(client, settings)
            app = create_app(settings, store, publish=False)
        except Exception as exc:
            kind = "ConfigurationError" if isinstance(exc, SettingsError) else "InitError"
            await runtime.init_error(exc, f"Runtime.{kind}")
            raise SystemExit(1) from exc
        await serve_invocations(runtime, app, settings.lambda_deadline_margin_seconds)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m handlers.stream", description=__doc__)
    parser.add_argument("--runtime-api", required=True, help="host:port of the Lambda Runtime API")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(run(args.runtime_api))


def handler(event: Any, context: Any) -> None:
    """Reached only when the exec wrapper is missing: say how to configure the function."""
    raise RuntimeError(
        "the subscribe function streams through its own runtime loop: set "
        "AWS_LAMBDA_EXEC_WRAPPER=/var/task/handlers/bootstrap on this function"
    )


if __name__ == "__main__":
    main()
