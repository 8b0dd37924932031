"""The Runtime API emulator refuses what Lambda's Runtime API refuses, with its status
and error type, and fails the test on a runtime's mistake Lambda would hide: each rule
shown against raw HTTP, and against the gateway's own client where it obeys."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Sequence

import pytest

from handlers.runtime_api import STREAMING_CONTENT_TYPE, RuntimeAPI, RuntimeAPIError
from tests.lambda_events import load_event
from tests.lambda_runtime import Outcome, Refusal, RuntimeAPIEmulator

BASE = "/2018-06-01/runtime"
STREAMING = (
    ("Lambda-Runtime-Function-Response-Mode", "streaming"),
    ("Content-Type", STREAMING_CONTENT_TYPE),
)


@pytest.fixture
async def emulator() -> AsyncIterator[RuntimeAPIEmulator]:
    async with RuntimeAPIEmulator() as running:
        yield running


async def _invocation(
    emulator: RuntimeAPIEmulator, timeout_seconds: float = 30
) -> tuple[str, asyncio.Future[Outcome]]:
    """An invocation handed out by ``/next``, as a runtime takes it: its request id, and
    its outcome to come."""
    outcome = emulator.invoke(load_event("healthz"), timeout_seconds)
    return (await RuntimeAPI(emulator.address).next_invocation()).request_id, outcome


async def _post(
    emulator: RuntimeAPIEmulator,
    path: str,
    headers: Sequence[tuple[str, str]] = STREAMING,
    chunks: Sequence[bytes] = (b"{}",),
    trailers: Sequence[tuple[str, str]] = (),
) -> tuple[int, dict[str, str]]:
    """A chunked POST written by hand, trailers and all; its status and JSON answer."""
    host, port = emulator.address.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"POST {BASE}{path} HTTP/1.1", f"Host: {emulator.address}"]
    lines += ["Transfer-Encoding: chunked", *(f"{k}: {v}" for k, v in headers)]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    for chunk in chunks:
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    writer.write(b"0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in trailers) + b"\r\n")
    await writer.drain()
    answer = await reader.read()  # the emulator closes after answering
    writer.close()
    if not answer:
        return 0, {}  # closed without an answer
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def test_an_outcome_for_an_unknown_invocation_is_400_invalid_request_id(
    emulator: RuntimeAPIEmulator,
) -> None:
    for kind in ("response", "error"):
        headers = STREAMING if kind == "response" else (("Content-Type", "application/json"),)
        status, answer = await _post(emulator, f"/invocation/no-such-id/{kind}", headers)
        assert (status, answer["errorType"]) == (400, "InvalidRequestID")
    assert [r.status for r in emulator.take_refusals()] == [400, 400]


async def test_a_second_outcome_for_one_invocation_is_refused(
    emulator: RuntimeAPIEmulator,
) -> None:
    request_id, _ = await _invocation(emulator)
    stream = await RuntimeAPI(emulator.address).start_stream(request_id, b'{"statusCode":200}')
    await stream.finish()  # the first is taken
    second = await _post(emulator, f"/invocation/{request_id}/response")
    error = await _post(emulator, f"/invocation/{request_id}/error", chunks=[b"{}"])
    assert [second[0], error[0]] == [400, 400]
    assert emulator.take_refusals() == [
        Refusal(f"{BASE}/invocation/{request_id}/response", 400, "InvalidRequestID"),
        Refusal(f"{BASE}/invocation/{request_id}/error", 400, "InvalidRequestID"),
    ]


async def test_a_response_mode_other_than_streaming_is_400(emulator: RuntimeAPIEmulator) -> None:
    request_id, _ = await _invocation(emulator)
    headers = (("Lambda-Runtime-Function-Response-Mode", "Streaming"),)  # the case counts
    status, answer = await _post(emulator, f"/invocation/{request_id}/response", headers)
    assert (status, answer["errorType"]) == (400, "InvalidFunctionResponseMode")
    assert len(emulator.take_refusals()) == 1


async def test_an_http_integration_response_sent_buffered_fails_the_test() -> None:
    with pytest.raises(AssertionError, match="sent buffered"):
        async with RuntimeAPIEmulator() as emulator:
            request_id, _ = await _invocation(emulator)
            headers = (("Content-Type", STREAMING_CONTENT_TYPE),)  # no response mode
            assert (await _post(emulator, f"/invocation/{request_id}/response", headers))[0] == 202


async def test_trailers_not_declared_in_the_trailer_header_are_dropped(
    emulator: RuntimeAPIEmulator,
) -> None:
    body = base64.b64encode(b'{"errorMessage": "broke"}').decode()
    trailers = (
        ("Lambda-Runtime-Function-Error-Type", "Runtime.StreamError"),
        ("Lambda-Runtime-Function-Error-Body", body),
    )
    outcomes = []
    for declared in ("", "Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body"):
        request_id, pending = await _invocation(emulator)
        headers = (*STREAMING, ("Trailer", declared)) if declared else STREAMING
        await _post(emulator, f"/invocation/{request_id}/response", headers, trailers=trailers)
        outcomes.append(await pending)
    undeclared, declared_outcome = outcomes
    assert undeclared.trailers == {}
    assert set(undeclared.undeclared_trailers) == {name.lower() for name, _ in trailers}
    assert declared_outcome.trailers == {name.lower(): value for name, value in trailers}


@pytest.mark.parametrize("error_type", ["InvalidEvent", "Function.", "runtime.Lower", "Unhandled"])
async def test_an_error_type_lambda_files_as_unknown_fails_the_test(error_type: str) -> None:
    with pytest.raises(AssertionError, match=r"filed as Runtime\.Unknown"):
        async with RuntimeAPIEmulator() as emulator:
            request_id, _ = await _invocation(emulator)
            headers = (("Lambda-Runtime-Function-Error-Type", error_type),)
            assert (await _post(emulator, f"/invocation/{request_id}/error", headers))[0] == 202


async def test_the_gateways_error_types_pass(emulator: RuntimeAPIEmulator) -> None:
    runtime = RuntimeAPI(emulator.address)
    await runtime.invocation_error((await _invocation(emulator))[0], ValueError("bad event"))
    stream = await runtime.start_stream((await _invocation(emulator))[0], b'{"statusCode":200}')
    await stream.finish(error=RuntimeError("broke mid-stream"))
    await runtime.init_error(RuntimeError("no table"), "Runtime.InitError")
    assert emulator.violations == []


async def test_an_outcome_after_the_deadline_is_410_then_400(
    emulator: RuntimeAPIEmulator,
) -> None:
    pending = emulator.invoke(load_event("healthz"), timeout_seconds=0.2)
    request_id = (await RuntimeAPI(emulator.address).next_invocation()).request_id
    assert (await pending).kind == "timeout"  # the deadline passed with no outcome
    late = await _post(emulator, f"/invocation/{request_id}/response")
    later = await _post(emulator, f"/invocation/{request_id}/error")
    assert [(late[0], late[1]["errorType"]), later[0]] == [(410, "InvokeTimeout"), 400]
    assert [r.status for r in emulator.take_refusals()] == [410, 400]


async def test_a_response_streaming_at_the_deadline_is_cut_with_410(
    emulator: RuntimeAPIEmulator,
) -> None:
    request_id, pending = await _invocation(emulator, timeout_seconds=0.5)
    stream = await RuntimeAPI(emulator.address).start_stream(request_id, b'{"statusCode":200}')
    cut = asyncio.Event()
    stream.on_cut_short(cut.set)
    await asyncio.wait_for(cut.wait(), 20)  # nothing more written: the Runtime API ended it
    outcome = await pending
    with pytest.raises(RuntimeAPIError, match="answered 410"):
        await stream.finish()
    assert outcome.answered == 410 and outcome.finished_at >= outcome.deadline
    assert [r.status for r in emulator.take_refusals()] == [410]


async def test_a_streamed_response_past_the_size_cap_is_cut_with_413(
    emulator: RuntimeAPIEmulator,
) -> None:
    emulator.max_streamed_bytes = 64 * 1024  # 200 MiB on Lambda: the rule, smaller
    request_id, _ = await _invocation(emulator)
    stream = await RuntimeAPI(emulator.address).start_stream(request_id, b'{"statusCode":200}')
    cut = asyncio.Event()
    stream.on_cut_short(cut.set)
    written = 0
    with pytest.raises(RuntimeAPIError, match="ended the streamed response early"):
        while True:  # until the refusal is noticed: the write after it raises
            await stream.write(b"x" * 4096)
            written += 4096
            await asyncio.sleep(0.01)  # the answer gets its turn to be read
    assert cut.is_set() and written < 2 * emulator.max_streamed_bytes
    with pytest.raises(RuntimeAPIError, match="answered 413"):
        await stream.finish()
    assert emulator.take_refusals() == [
        Refusal(f"{BASE}/invocation/{request_id}/response", 413, "RequestEntityTooLarge")
    ]


async def test_a_streamed_response_is_throttled_after_its_unthrottled_bytes(
    emulator: RuntimeAPIEmulator,
) -> None:
    """Lambda: the first 6 MiB at full speed, then 2 MiB/s; the same rule, smaller."""
    emulator.unthrottled_bytes = 64 * 1024
    emulator.throttled_bytes_per_second = 512 * 1024
    request_id, pending = await _invocation(emulator)
    stream = await RuntimeAPI(emulator.address).start_stream(request_id, b"{}")
    for _ in range(20):
        await stream.write(b"x" * 16 * 1024)  # 320 KiB in all
    await stream.finish()
    outcome = await pending

    seen, crossed_at = 0, None
    for at, chunk in outcome.chunks:
        seen += len(chunk)
        if crossed_at is None and seen > emulator.unthrottled_bytes:
            crossed_at = at
    assert crossed_at is not None
    last_at, last = outcome.chunks[-1]
    beyond_before_last = seen - len(last) - emulator.unthrottled_bytes
    assert last_at - crossed_at >= beyond_before_last / emulator.throttled_bytes_per_second


async def test_an_error_inside_the_emulator_fails_the_test() -> None:
    with pytest.raises(ExceptionGroup) as raised:
        async with RuntimeAPIEmulator() as emulator:
            headers = (("Lambda-Runtime-Function-Error-Type", "Runtime.InitError"),)
            # Not JSON: the emulator's own parsing fails inside its connection task.
            await _post(emulator, "/init/error", headers, chunks=[b"not json"])
    assert raised.group_contains(json.JSONDecodeError)


async def test_an_unexpected_refusal_fails_the_test() -> None:
    with pytest.raises(AssertionError, match="InvalidRequestID"):
        async with RuntimeAPIEmulator() as emulator:
            await _post(emulator, "/invocation/no-such-id/response")
