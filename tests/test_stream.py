"""The subscribe function's runtime loop, run as a real process against a Runtime API
emulator, with DynamoDB on moto's server."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from gateway.items import NewEvent
from gateway.settings import Settings
from gateway.store import EventLog
from tests.eventstream import EventStreamParser, MessageEvent
from tests.lambda_events import load_event
from tests.lambda_runtime import Outcome, RuntimeAPIEmulator

OpenLog = Callable[..., AbstractAsyncContextManager[EventLog]]
Runtime = Callable[..., AbstractAsyncContextManager[tuple[RuntimeAPIEmulator, Any]]]


@pytest.fixture
def runtime(make_settings: Callable[..., Settings]) -> Runtime:
    """A factory: an emulator and ``python -m handlers.stream`` (or ``code``) against it."""

    @asynccontextmanager
    async def start(
        code: str | None = None, warm: bool = True, **env: str
    ) -> AsyncIterator[tuple[RuntimeAPIEmulator, Any]]:
        settings = make_settings()
        environment = {
            **os.environ,
            "SSE_GATEWAY_TABLE_NAME": settings.table_name,
            "SSE_GATEWAY_DYNAMODB_ENDPOINT_URL": str(settings.dynamodb_endpoint_url),
            "SSE_GATEWAY_RETRY_MS": "50",
            "SSE_GATEWAY_POLL_MAX_SECONDS": "0.2",
            "SSE_GATEWAY_LAMBDA_DEADLINE_MARGIN_SECONDS": "1",
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": "us-east-1",
            **env,
        }
        async with RuntimeAPIEmulator() as emulator:
            command = ["-m", "handlers.stream", "--runtime-api", emulator.address]
            if code is not None:
                command = ["-c", code.replace("ADDRESS", emulator.address)]
            process = await asyncio.create_subprocess_exec(
                sys.executable, *command, env=environment, stderr=asyncio.subprocess.PIPE
            )
            try:
                if warm:  # a first invocation, so later ones do not wait for imports
                    ready = await asyncio.wait_for(emulator.invoke(load_event("healthz"), 10), 30)
                    assert ready.prelude["statusCode"] == 200
                yield emulator, process
            finally:
                if process.returncode is None:
                    process.kill()
                await process.wait()
                assert process.stderr is not None
                print((await process.stderr.read()).decode())  # shown when a test fails

    return start


def _events(outcome: Outcome) -> tuple[list[MessageEvent], EventStreamParser]:
    parser = EventStreamParser()
    return parser.feed(outcome.payload), parser


async def test_stream_sends_prelude_and_frames_as_they_happen_then_retry_before_deadline(
    runtime: Runtime, open_log: OpenLog
) -> None:
    async with open_log() as log, runtime() as (emulator, _):
        (before,) = (await log.append("orders:42", [NewEvent('"before"')])).events
        pending = emulator.invoke(load_event("subscribe"), timeout_seconds=4.0)
        published = []
        for value in ("a", "b", "c"):
            await asyncio.sleep(0.7)
            published += (await log.append("orders:42", [NewEvent(json.dumps(value))])).events
        outcome = await asyncio.wait_for(pending, 20)

    assert outcome.kind == "response"
    assert outcome.headers["lambda-runtime-function-response-mode"] == "streaming"
    assert outcome.headers["content-type"] == "application/vnd.awslambda.http-integration-response"
    assert outcome.headers["transfer-encoding"] == "chunked"
    assert outcome.prelude["statusCode"] == 200
    assert outcome.prelude["headers"]["content-type"] == "text/event-stream; charset=utf-8"
    assert outcome.prelude["headers"]["x-accel-buffering"] == "no"
    assert outcome.prelude["cookies"] == []
    events, parser = _events(outcome)
    assert [e.last_event_id for e in events] == [e.event_id for e in published]
    assert parser.retry == 50
    assert outcome.trailers == {}
    # Streamed, not buffered: body chunks arrived over the session, not all at its end.
    arrivals = outcome.payload_arrivals()
    assert len(arrivals) >= 4  # the head id frame, three events, the retry
    assert arrivals[0] < outcome.finished_at - 1.5
    assert max(b - a for a, b in itertools.pairwise(arrivals)) > 0.3
    # The session ended itself, with its margin, before Lambda's deadline.
    assert outcome.finished_at < outcome.deadline
    assert before.event_id not in [e.last_event_id for e in events]


async def test_stream_resumes_across_invocations_of_one_process(
    runtime: Runtime, open_log: OpenLog
) -> None:
    async with open_log() as log, runtime() as (emulator, process):
        first = emulator.invoke(load_event("subscribe_query_resume"), timeout_seconds=2.5)
        await asyncio.sleep(0.5)
        live = (await log.append("orders:42", [NewEvent("1"), NewEvent("2")])).events
        one = await asyncio.wait_for(first, 20)
        seen, parser = _events(one)
        assert [e.last_event_id for e in seen] == [e.event_id for e in live]
        missed = (await log.append("orders:42", [NewEvent("3"), NewEvent("4")])).events
        resume = load_event("subscribe", last_event_id=parser.last_event_id)
        two = await asyncio.wait_for(emulator.invoke(resume, timeout_seconds=2.0), 20)
        three = await asyncio.wait_for(
            emulator.invoke(load_event("subscribe"), timeout_seconds=1.5), 20
        )
        assert process.returncode is None  # one process served all three

    resumed, _ = _events(two)
    assert [e.last_event_id for e in resumed] == [e.event_id for e in missed]
    fresh, fresh_parser = _events(three)
    assert fresh == [] and fresh_parser.last_event_id == missed[-1].event_id


async def test_stream_reports_a_bad_invocation_to_the_error_endpoint_and_goes_on(
    runtime: Runtime,
) -> None:
    async with runtime() as (emulator, process):
        bad = await asyncio.wait_for(emulator.invoke({"not": "a url event"}, 5), 20)
        good = await asyncio.wait_for(emulator.invoke(load_event("subscribe"), 1.5), 20)
        assert process.returncode is None
    assert bad.kind == "error"
    assert bad.headers["lambda-runtime-function-error-type"] == "InvalidEvent"
    assert "function URL event" in json.loads(bad.body)["errorMessage"]
    assert (good.kind, good.prelude["statusCode"]) == ("response", 200)


async def test_stream_reports_an_error_after_the_first_byte_in_trailers(runtime: Runtime) -> None:
    code = (
        "import asyncio; from handlers.runtime_api import RuntimeAPI;"
        "from handlers.stream import serve_invocations;"
        "from tests.lambda_apps import fails_after_first_byte;"
        "asyncio.run(serve_invocations(RuntimeAPI('ADDRESS'), fails_after_first_byte, 1.0))"
    )
    async with runtime(code, warm=False) as (emulator, _):
        outcome = await asyncio.wait_for(emulator.invoke(load_event("subscribe"), 5), 20)
    assert outcome.kind == "response"
    assert outcome.payload == b"partial"
    assert outcome.trailers["lambda-runtime-function-error-type"] == "Runtime.StreamError"
    body = json.loads(base64.b64decode(outcome.trailers["lambda-runtime-function-error-body"]))
    assert body["errorMessage"] == "the app broke mid-stream"


async def test_stream_reports_invalid_settings_to_init_error(runtime: Runtime) -> None:
    async with runtime(warm=False, SSE_GATEWAY_RETRY_MS="-5") as (emulator, process):
        headers, error = await asyncio.wait_for(emulator.init_errors.get(), 20)
        assert await asyncio.wait_for(process.wait(), 20) == 1
    assert headers["lambda-runtime-function-error-type"] == "Runtime.ConfigurationError"
    assert "SSE_GATEWAY_RETRY_MS" in error["errorMessage"]
