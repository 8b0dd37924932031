"""The subscribe function's runtime loop, run as a real process against a Runtime API
emulator, with DynamoDB on moto's server."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest

from gateway.items import NewEvent
from gateway.settings import Settings
from gateway.store import EventLog
from tests.cloudwatch import datapoints, total
from tests.eventstream import EventStreamParser, MessageEvent
from tests.lambda_events import load_event
from tests.lambda_runtime import DROP, MAX_STREAMED_BYTES, Outcome, RuntimeAPIEmulator
from tests.servers import FaultProxy

OpenLog = Callable[..., AbstractAsyncContextManager[EventLog]]
SECRET = "a-test-secret-that-is-long-enough-0123456789"


@dataclass
class RuntimeProcess:
    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)  # complete once the process has ended
    stdout: list[str] = field(default_factory=list)  # its metrics (EMF), likewise

    def logs(self) -> list[dict[str, Any]]:
        """Every line the runtime wrote, each of which must be a JSON object."""
        return [json.loads(line) for line in self.lines]


Runtime = Callable[..., AbstractAsyncContextManager[tuple[RuntimeAPIEmulator, RuntimeProcess]]]


@pytest.fixture
def runtime(make_settings: Callable[..., Settings]) -> Runtime:
    """A factory: an emulator and ``python -m handlers.stream`` (or ``code``) against it,
    found through ``AWS_LAMBDA_RUNTIME_API`` as Lambda starts a runtime."""

    @asynccontextmanager
    async def start(
        code: str | None = None, warm: bool = True, next_faults: Sequence[int] = (), **env: str
    ) -> AsyncIterator[tuple[RuntimeAPIEmulator, RuntimeProcess]]:
        settings = make_settings()
        async with RuntimeAPIEmulator() as emulator:
            environment = {
                **os.environ,
                "AWS_LAMBDA_RUNTIME_API": emulator.address,
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
            for status in next_faults:
                emulator.fail_next(status)
            command = ["-m", "handlers.stream"] if code is None else ["-c", code]
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                *command,
                env=environment,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            runtime = RuntimeProcess(process)
            collect = asyncio.gather(
                _collect_lines(process.stderr, runtime.lines),
                _collect_lines(process.stdout, runtime.stdout),
            )
            try:
                if warm:  # a first invocation, so later ones do not wait for imports
                    ready = await asyncio.wait_for(emulator.invoke(load_event("healthz"), 10), 30)
                    assert ready.prelude["statusCode"] == 200
                yield emulator, runtime
            finally:
                if process.returncode is None:
                    process.kill()
                await process.wait()
                await collect
                print("\n".join(runtime.lines))  # shown when a test fails

    return start


async def _collect_lines(stream: asyncio.StreamReader | None, lines: list[str]) -> None:
    assert stream is not None
    async for line in stream:
        lines.append(line.decode().rstrip("\n"))


def _events(outcome: Outcome) -> tuple[list[MessageEvent], EventStreamParser]:
    parser = EventStreamParser()
    return parser.feed(outcome.payload), parser


def _serve(app: str, workers: int = 1) -> str:
    """A runtime process serving one of tests/lambda_apps.py's apps."""
    return (
        "import asyncio, sys; from gateway.settings import load_settings;"
        "from handlers.logs import log_json_lines; from handlers.runtime_api import RuntimeAPI;"
        "from handlers.stream import serve_invocations;"
        f"from tests.lambda_apps import {app}; log_json_lines(sys.stderr);"
        "asyncio.run(serve_invocations("
        f"RuntimeAPI(load_settings().lambda_runtime_api), {app}, 1.0, {workers}))"
    )


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
    # Without AWS_LAMBDA_MAX_CONCURRENCY, one invocation at a time.
    assert emulator.most_polling == 1


async def test_stream_resumes_across_invocations_of_one_process(
    runtime: Runtime, open_log: OpenLog
) -> None:
    async with open_log() as log, runtime() as (emulator, runtime_process):
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
        assert runtime_process.process.returncode is None  # one process served all three

    resumed, _ = _events(two)
    assert [e.last_event_id for e in resumed] == [e.event_id for e in missed]
    fresh, fresh_parser = _events(three)
    assert fresh == [] and fresh_parser.last_event_id == missed[-1].event_id


async def test_stream_decodes_an_encoded_path_and_query_like_an_asgi_server(
    runtime: Runtime, open_log: OpenLog
) -> None:
    """``new EventSource("/channels/" + encodeURIComponent("orders:42") + "/events?...")``."""
    token = jwt.encode(
        {"exp": 2_000_000_000, "sse": {"subscribe": ["orders:*"]}}, SECRET, algorithm="HS256"
    )
    async with (
        open_log() as log,
        runtime(SSE_GATEWAY_AUTH_SECRET=SECRET) as (emulator, _),
    ):
        first, second = (await log.append("orders:42", [NewEvent("1"), NewEvent("2")])).events
        event = load_event("subscribe_encoded")
        event["cookies"] = []
        event["rawQueryString"] = (
            f"token={token.replace('.', '%2E')}&last_event_id={first.event_id.replace('-', '%2D')}"
        )
        outcome = await asyncio.wait_for(emulator.invoke(event, timeout_seconds=1.5), 20)
        event["rawQueryString"] = ""
        refused = await asyncio.wait_for(emulator.invoke(event, timeout_seconds=1.5), 20)

    assert outcome.prelude["statusCode"] == 200
    events, _ = _events(outcome)
    assert [e.last_event_id for e in events] == [second.event_id]
    assert refused.prelude["statusCode"] == 401  # the token was what let the first one in


async def test_stream_reports_a_bad_invocation_to_the_error_endpoint_and_goes_on(
    runtime: Runtime,
) -> None:
    async with runtime() as (emulator, runtime_process):
        bad = await asyncio.wait_for(emulator.invoke({"not": "a url event"}, 5), 20)
        good = await asyncio.wait_for(emulator.invoke(load_event("subscribe"), 1.5), 20)
        assert runtime_process.process.returncode is None
    assert bad.kind == "error"
    # Lambda's rule, (Runtime|Function).<Name>, which the emulator checks on every error.
    assert bad.headers["lambda-runtime-function-error-type"] == "Function.InvalidEvent"
    assert "function URL event" in json.loads(bad.body)["errorMessage"]
    assert (good.kind, good.prelude["statusCode"]) == ("response", 200)
    (refusal,) = [line for line in runtime_process.logs() if line["message"].startswith("refused")]
    assert refusal["requestId"] == bad.request_id and refusal["level"] == "WARNING"


async def test_stream_reports_an_error_after_the_first_byte_in_trailers(runtime: Runtime) -> None:
    async with runtime(_serve("fails_after_first_byte"), warm=False) as (emulator, _):
        outcome = await asyncio.wait_for(emulator.invoke(load_event("subscribe"), 5), 20)
    assert outcome.kind == "response"
    assert outcome.payload == b"partial"
    assert outcome.trailers["lambda-runtime-function-error-type"] == "Runtime.StreamError"
    body = json.loads(base64.b64decode(outcome.trailers["lambda-runtime-function-error-body"]))
    assert body["errorMessage"] == "the app broke mid-stream"


async def test_stream_cancels_an_invocation_at_its_deadline_and_serves_the_next(
    runtime: Runtime,
) -> None:
    """Nothing stops code at the deadline on Managed Instances: the loop must. Lambda
    cuts a response still streaming at the deadline (410); one the loop ended with
    its error trailers at the same instant is as good."""
    async with runtime(_serve("never_finishes"), warm=False) as (emulator, runtime_process):
        await emulator.wait_until(lambda: emulator.polling == 1)  # started: the deadline is all
        first = await asyncio.wait_for(emulator.invoke(load_event("subscribe"), 1.0), 20)
        second = await asyncio.wait_for(emulator.invoke(load_event("subscribe"), 1.0), 20)
        cut = [o for o in (first, second) if o.answered == 410]
        assert [r.status for r in emulator.take_refusals()] == [410] * len(cut)

        def cancelled() -> list[str]:
            logs = runtime_process.logs()
            return [line["requestId"] for line in logs if line["message"] == "cancelled"]

        # The emulator's cut at the deadline can come before the loop's own cancel:
        # the runtime must live on until the second has been cancelled too.
        deadline = time.monotonic() + 20
        while len(cancelled()) < 2 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    for outcome in (first, second):
        assert outcome.payload == b"forever"
        if outcome.answered == 202:
            trailer = outcome.trailers["lambda-runtime-function-error-body"]
            assert json.loads(base64.b64decode(trailer))["errorMessage"] == (
                "the invocation ran past its deadline"
            )
        else:
            assert outcome.answered == 410 and outcome.finished_at >= outcome.deadline
    assert cancelled() == [first.request_id, second.request_id]


async def test_stream_reports_invalid_settings_to_init_error(runtime: Runtime) -> None:
    async with runtime(warm=False, SSE_GATEWAY_RETRY_MS="-5") as (emulator, runtime_process):
        headers, error = await asyncio.wait_for(emulator.init_errors.get(), 20)
        assert await asyncio.wait_for(runtime_process.process.wait(), 20) == 1
    assert headers["lambda-runtime-function-error-type"] == "Runtime.ConfigurationError"
    assert "SSE_GATEWAY_RETRY_MS" in error["errorMessage"]


async def test_stream_reports_missing_credentials_as_a_configuration_error(
    runtime: Runtime,
) -> None:
    unset = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": ""}
    nowhere = {"AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
    async with runtime(warm=False, AWS_EC2_METADATA_DISABLED="true", **unset, **nowhere) as (
        emulator,
        runtime_process,
    ):
        headers, error = await asyncio.wait_for(emulator.init_errors.get(), 20)
        assert await asyncio.wait_for(runtime_process.process.wait(), 20) == 1
    assert headers["lambda-runtime-function-error-type"] == "Runtime.ConfigurationError"
    assert error["errorMessage"].startswith("no AWS credentials: set AWS_ACCESS_KEY_ID")


async def test_stream_reports_an_unknown_variable_to_init_error(runtime: Runtime) -> None:
    async with runtime(warm=False, SSE_GATEWAY_HEARTBEAT_SECOND="5") as (emulator, _):
        headers, error = await asyncio.wait_for(emulator.init_errors.get(), 20)
    assert headers["lambda-runtime-function-error-type"] == "Runtime.ConfigurationError"
    assert "SSE_GATEWAY_HEARTBEAT_SECOND is not a setting; the closest is " in error["errorMessage"]
    assert "SSE_GATEWAY_HEARTBEAT_SECONDS" in error["errorMessage"]


async def test_stream_names_an_invalid_max_concurrency_in_its_init_error(runtime: Runtime) -> None:
    async with runtime(warm=False, AWS_LAMBDA_MAX_CONCURRENCY="0") as (emulator, _):
        headers, error = await asyncio.wait_for(emulator.init_errors.get(), 20)
    assert headers["lambda-runtime-function-error-type"] == "Runtime.ConfigurationError"
    assert "AWS_LAMBDA_MAX_CONCURRENCY: Input should be greater than or equal to 1" in str(error)


async def test_stream_without_a_runtime_api_says_which_variable_to_set() -> None:
    environment = {k: v for k, v in os.environ.items() if k != "AWS_LAMBDA_RUNTIME_API"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "handlers.stream", env=environment, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    (line,) = [json.loads(line) for line in stderr.decode().splitlines()]
    assert "set AWS_LAMBDA_RUNTIME_API" in line["message"] and line["level"] == "ERROR"


async def test_stream_retries_a_failed_next_invocation(runtime: Runtime) -> None:
    async with runtime(next_faults=[500, DROP]) as (emulator, runtime_process):
        # The warm-up invocation was served after both failures.
        outcome = await asyncio.wait_for(emulator.invoke(load_event("healthz"), 5), 20)
        assert runtime_process.process.returncode is None
    assert outcome.prelude["statusCode"] == 200
    retries = [line for line in runtime_process.logs() if "no next invocation" in line["message"]]
    assert len(retries) == 2
    assert "answered 500" in retries[0]["message"]
    assert "connection broke" in retries[1]["message"]


@pytest.mark.parametrize("fault", [500, DROP], ids=["answered-500", "connection-dropped"])
async def test_stream_survives_a_failed_response_and_serves_the_next(
    runtime: Runtime, open_log: OpenLog, fault: int
) -> None:
    """Writing or finishing a streamed response fails: log it, take the next invocation."""
    async with (
        open_log(),
        runtime(SSE_GATEWAY_HEARTBEAT_SECONDS="0.1") as (emulator, runtime_process),
    ):
        emulator.fail_response(fault)
        failed = await asyncio.wait_for(emulator.invoke(load_event("subscribe"), 2.0), 20)
        after = await asyncio.wait_for(emulator.invoke(load_event("subscribe"), 1.5), 20)
        assert runtime_process.process.returncode is None
    assert failed.answered == fault
    assert (after.answered, after.prelude["statusCode"]) == (202, 200)
    errors = [line for line in runtime_process.logs() if line["level"] == "ERROR"]
    assert errors and all(line["requestId"] == failed.request_id for line in errors)
    assert errors[0]["errorType"] in ("RuntimeAPIError", "ExceptionGroup")


CHANNELS = [f"lmi:{number}" for number in range(5)]


async def test_stream_serves_50_concurrent_invocations_in_one_process(
    runtime: Runtime, open_log: OpenLog
) -> None:
    """Lambda Managed Instances: 50 invocations at once, 10 on each of 5 channels, each
    resuming after an event of its channel; every one gets its channel's events, each
    exactly once and in order, and ends itself before its own deadline."""
    async with (
        open_log() as log,
        runtime(AWS_LAMBDA_MAX_CONCURRENCY="50") as (emulator, runtime_process),
    ):
        await emulator.wait_until(lambda: emulator.polling == 50)
        before = {c: (await log.append(c, [NewEvent("0")])).events for c in CHANNELS}
        pending = []
        for number in range(50):
            channel = CHANNELS[number % len(CHANNELS)]
            event = load_event("subscribe", last_event_id=before[channel][0].event_id)
            event["rawPath"] = f"/channels/{channel}/events"
            pending.append((channel, emulator.invoke(event, timeout_seconds=5.0)))
        await emulator.wait_until(lambda: emulator.streams_started == 1 + 50)  # + the warm-up
        published: dict[str, list[Any]] = {channel: [] for channel in CHANNELS}
        for value in range(1, 5):
            for channel in CHANNELS:
                published[channel] += (await log.append(channel, [NewEvent(str(value))])).events
            await asyncio.sleep(0.2)
        outcomes = [(channel, await asyncio.wait_for(f, 30)) for channel, f in pending]
        await emulator.wait_until(lambda: emulator.polling == 50)  # every outcome logged
        assert runtime_process.process.returncode is None

    assert emulator.most_polling == 50  # 50 workers, each on its own connection
    for channel, outcome in outcomes:
        events, _ = _events(outcome)
        assert [e.last_event_id for e in events] == [e.event_id for e in published[channel]]
        assert outcome.finished_at < outcome.deadline
    served = [line for line in runtime_process.logs() if line["message"].startswith("GET /chan")]
    assert sorted(line["requestId"] for line in served) == sorted(o.request_id for _, o in outcomes)


async def test_stream_polls_a_channel_once_however_many_invocations_follow_it(
    runtime: Runtime, open_log: OpenLog, fault_proxy: FaultProxy
) -> None:
    """DynamoDB requests are counted outside the runtime, by a proxy in front of moto,
    over the same idle window with 1 and with 50 invocations on one channel."""
    async with (
        open_log(),
        runtime(
            AWS_LAMBDA_MAX_CONCURRENCY="50", SSE_GATEWAY_DYNAMODB_ENDPOINT_URL=fault_proxy.url
        ) as (emulator, _),
    ):

        async def requests_while_streaming(invocations: int) -> int:
            await emulator.wait_until(lambda: emulator.polling == 50)
            started = emulator.payloads_started
            pending = [emulator.invoke(load_event("subscribe"), 4.0) for _ in range(invocations)]
            # Each session's first frame (its head id) is in: they all read the head.
            await emulator.wait_until(lambda: emulator.payloads_started == started + invocations)
            fault_proxy.seen.clear()
            await asyncio.sleep(1.5)
            requests = len(fault_proxy.seen)
            await asyncio.wait_for(asyncio.gather(*pending), 30)
            return requests

        one = await requests_while_streaming(1)
        fifty = await requests_while_streaming(50)

    assert one >= 3  # the tail loop polls during the window
    assert fifty <= 2 * one + 2  # one loop per channel: 50 loops would make ~50 times as many


async def test_stream_logs_json_lines_with_each_invocations_request_id(runtime: Runtime) -> None:
    async with runtime(_serve("logs_around_a_pause", workers=2), warm=False) as (emulator, rp):
        await emulator.wait_until(lambda: emulator.polling == 2)
        events = [load_event("healthz") for _ in range(2)]
        events[0]["rawPath"], events[1]["rawPath"] = "/a", "/b"
        a, b = await asyncio.gather(*(emulator.invoke(event, 5) for event in events))
        await emulator.wait_until(lambda: emulator.polling == 2)  # both outcomes logged

    request_ids = {"/a": a.request_id, "/b": b.request_id}
    app_lines = [line for line in rp.logs() if line["logger"] == "tests.lambda_apps"]
    # The two invocations ran at once, their lines interleaved ...
    assert [line["message"].split()[0] for line in app_lines] == ["begin", "begin", "end", "end"]
    # ... and each line names the invocation that wrote it.
    for line in app_lines:
        assert line["requestId"] == request_ids[line["message"].split()[1]]
    served = {line["message"]: line["requestId"] for line in rp.logs() if "204" in line["message"]}
    assert served == {"GET /a 204": a.request_id, "GET /b 204": b.request_id}


async def test_stream_reports_metrics_as_emf_lines_after_each_invocation(
    runtime: Runtime, open_log: OpenLog
) -> None:
    metrics_on = {"SSE_GATEWAY_METRICS": "true", "AWS_LAMBDA_FUNCTION_NAME": "subscribe-fn"}
    async with open_log() as log, runtime(**metrics_on) as (emulator, runtime_process):
        pending = emulator.invoke(load_event("subscribe"), timeout_seconds=3.0)
        await asyncio.sleep(0.7)
        await log.append("orders:42", [NewEvent("1"), NewEvent("2")])
        session = await asyncio.wait_for(pending, 20)
        # The next invocation is handed out only after the flush that followed this one.
        await asyncio.wait_for(emulator.invoke(load_event("healthz"), 5), 20)
    assert len(_events(session)[0]) == 2
    # Complete now that the process has ended; never mixed with the log lines.
    points = datapoints(runtime_process.stdout)
    assert points and not [line for line in runtime_process.lines if '"_aws"' in line]
    named = {"function": "subscribe-fn"}
    assert {p.namespace for p in points} == {"sse-gateway"}
    assert total(points, "sse_gateway_store_requests_total", **named, operation="query") >= 2
    assert total(points, "sse_gateway_store_requests_total", **named, operation="put") == 0
    # Needs the session wiring (gateway/session.py):
    assert total(points, "sse_gateway_events_delivered_total", **named) == 2
    assert total(points, "sse_gateway_sessions_total", **named, end="deadline") == 1


async def test_stream_sends_each_invocations_trace_id_on_its_own_dynamodb_calls(
    runtime: Runtime, open_log: OpenLog, fault_proxy: FaultProxy
) -> None:
    """Two invocations at once in one process, each with its own
    ``Lambda-Runtime-Trace-Id``, each resuming on a channel of its own: seen at the
    wire, each one's DynamoDB requests carry its trace id, never the other's. The
    first one's head query is held at the proxy until the second has run, so its
    read of the log comes after the second began (when a process-wide
    ``_X_AMZN_TRACE_ID`` would name the second)."""
    async with (
        open_log() as log,
        runtime(
            AWS_LAMBDA_MAX_CONCURRENCY="2",
            AWS_LAMBDA_FUNCTION_NAME="subscribe-fn",  # as on Lambda, where botocore traces too
            SSE_GATEWAY_DYNAMODB_ENDPOINT_URL=fault_proxy.url,
        ) as (emulator, _),
    ):
        await emulator.wait_until(lambda: emulator.polling == 2)
        published = {}
        for channel in ("trace:a", "trace:b"):
            # Three items: a resume after the first must read the log, not only the head.
            published[channel] = [
                (await log.append(channel, [NewEvent(str(n))])).events[0] for n in range(3)
            ]

        def resume(channel: str) -> dict[str, Any]:
            event = load_event("subscribe", last_event_id=published[channel][0].event_id)
            event["rawPath"] = f"/channels/{channel}/events"
            return event

        held = fault_proxy.hold("query")
        first = emulator.invoke(resume("trace:a"), timeout_seconds=5.0)
        assert await asyncio.to_thread(held.applied.wait, 30)
        second = await asyncio.wait_for(emulator.invoke(resume("trace:b"), 2.0), 30)
        held.released.set()
        first_outcome = await asyncio.wait_for(first, 30)

    assert first_outcome.trace_id != second.trace_id
    for channel, outcome in (("trace:a", first_outcome), ("trace:b", second)):
        events, _ = _events(outcome)
        assert [e.last_event_id for e in events] == [e.event_id for e in published[channel][1:]]
        queries = [
            request
            for request in fault_proxy.traced
            if request.operation == "query" and f'"{channel}"'.encode() in request.body
        ]
        traced = [request.trace_id for request in queries if request.trace_id is not None]
        assert len(traced) >= 2  # its head query and its read of the log, made for it
        assert set(traced) == {outcome.trace_id}
        # The channel's shared tail loop serves no one invocation: it carries no trace id.
        assert any(request.trace_id is None for request in queries)


@pytest.mark.parametrize("cut", ["oversized", "dropped"])
async def test_stream_ends_a_session_the_runtime_api_cuts_short_at_once(
    runtime: Runtime, open_log: OpenLog, cut: str
) -> None:
    """Lambda answers 413 past the size cap while the response still streams, or the
    connection closes: the session ends then, not at its next write. No heartbeat
    falls within the invocation, so without reading the connection the worker would
    be back at ``/next`` only when the session ends itself, before its deadline."""
    timeout = 30.0
    margin = 1.0  # SSE_GATEWAY_LAMBDA_DEADLINE_MARGIN_SECONDS in the fixture
    async with (
        open_log() as log,
        runtime(SSE_GATEWAY_HEARTBEAT_SECONDS=str(2 * timeout)) as (emulator, runtime_process),
    ):
        await emulator.wait_until(lambda: emulator.polling == 1)
        started = emulator.payloads_started
        if cut == "oversized":
            emulator.max_streamed_bytes = 1024  # the prelude and a few frames
        else:
            emulator.fail_response(DROP)  # once the payload begins
        pending = emulator.invoke(load_event("subscribe"), timeout_seconds=timeout)
        await emulator.wait_until(lambda: emulator.payloads_started == started + 1)
        if cut == "oversized":
            await log.append("orders:42", [NewEvent(json.dumps("x" * 2048))])
        outcome = await asyncio.wait_for(pending, 2 * timeout)
        await emulator.wait_until(lambda: emulator.polling == 1)
        back_at_next = asyncio.get_running_loop().time()  # time.monotonic, as the deadline
        emulator.max_streamed_bytes = MAX_STREAMED_BYTES
        after = await asyncio.wait_for(emulator.invoke(load_event("healthz"), 5), 20)
        refusals = emulator.take_refusals()

    assert back_at_next < outcome.deadline - margin
    assert outcome.answered == (413 if cut == "oversized" else DROP)
    assert [r.status for r in refusals] == ([413] if cut == "oversized" else [])
    assert after.prelude["statusCode"] == 200
    errors = [line for line in runtime_process.logs() if line["level"] == "ERROR"]
    assert errors and all(line["requestId"] == outcome.request_id for line in errors)
    if cut == "oversized":
        assert "answered 413" in errors[0]["message"]


async def test_stream_keeps_a_token_out_of_its_json_log_however_its_name_is_spelt(
    runtime: Runtime,
) -> None:
    token = jwt.encode(
        {"exp": 2_000_000_000, "sse": {"subscribe": ["orders:*"]}}, SECRET, algorithm="HS256"
    )
    async with runtime(SSE_GATEWAY_AUTH_SECRET=SECRET) as (emulator, rp):
        event = load_event("subscribe_encoded")
        event["cookies"] = []
        event["rawQueryString"] = f"x=1&to%6Ben={token}"
        outcome = await asyncio.wait_for(emulator.invoke(event, timeout_seconds=1.5), 20)
        await emulator.wait_until(lambda: emulator.polling == 1)  # its outcome logged

    assert outcome.prelude["statusCode"] == 200  # the app read it as the token
    assert any("to%6Ben=[redacted]" in line["message"] for line in rp.logs())
    assert not [line for line in rp.lines if token.split(".")[2] in line]
