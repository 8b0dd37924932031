"""``sse-gateway serve`` against hostile connections, as an attacker makes them: raw
sockets to a real process, under either HTTP parser."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager, contextmanager, suppress
from typing import Any

import httpx
import pytest

from gateway.settings import Settings
from gateway.store import EventLog
from tests.eventstream import read_session
from tests.servers import GatewayServer, free_port, publish, sse_gateway_command

# Generous: each wait is bounded by a configured timeout of about a second.
SLACK_SECONDS = 20
Serve = Callable[..., AbstractContextManager[tuple[str, int]]]


@pytest.fixture(params=["httptools", "h11"])
def serve(
    request: pytest.FixtureRequest,
    make_settings: Callable[..., Settings],
    open_log: Callable[..., AbstractAsyncContextManager[EventLog]],
) -> Serve:
    """A factory: ``sse-gateway serve`` on the test's table with these settings."""
    http = request.param

    @contextmanager
    def process(port: int, env: dict[str, str]) -> Iterator[None]:
        command = sse_gateway_command("serve", "--port", str(port), "--http", http)
        child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=None)
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            yield
        finally:
            child.kill()
            child.wait()

    async def create_table() -> None:
        async with open_log():
            pass

    @contextmanager
    def start(**settings: Any) -> Iterator[tuple[str, int]]:
        base = make_settings()
        asyncio.run(create_table())
        env = {
            **os.environ,
            "SSE_GATEWAY_TABLE_NAME": base.table_name,
            "SSE_GATEWAY_DYNAMODB_ENDPOINT_URL": str(base.dynamodb_endpoint_url),
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        env.update({f"SSE_GATEWAY_{k.upper()}": str(v) for k, v in settings.items()})
        port = free_port()
        with process(port, env):
            yield http, port

    return start


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(SLACK_SECONDS)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """All the server sends until it closes the connection (a reset counts as closed)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def _healthy(port: int) -> bool:
    return httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200


def test_a_request_head_beyond_the_bound_is_refused_and_closed(serve: Serve) -> None:
    with serve() as (http, port):  # the default bound, 32 KiB
        with _connect(port) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65_536)
            answer = _read_until_closed(sock)
        assert _healthy(port)
    # h11 refuses an oversized head itself (uvicorn answers its error 400).
    status = b"431" if http == "httptools" else b"400"
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:80]


def test_a_head_sent_in_time_and_within_the_bound_is_served(serve: Serve) -> None:
    with serve(header_timeout_seconds=1) as (_, port), _connect(port) as sock:
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Fine: " + b"a" * 16_000 + b"\r\n\r\n"
        sock.sendall(head)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


def test_a_partial_head_and_a_silent_connection_are_closed_at_the_header_timeout(
    serve: Serve,
) -> None:
    with serve(header_timeout_seconds=1) as (_, port):
        with _connect(port) as partial, _connect(port) as silent:
            partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            assert _read_until_closed(partial).startswith(b"HTTP/1.1 408")
            assert _read_until_closed(silent) == b""
        with _connect(port) as kept:  # the next request of a kept-alive connection too
            kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert kept.recv(65536).startswith(b"HTTP/1.1 200")
            kept.sendall(b"GET /healthz HTTP/1.1\r\n")
            assert b"HTTP/1.1 408" in _read_until_closed(kept)


def test_a_trickled_publish_body_gets_408_at_the_body_timeout(serve: Serve) -> None:
    with serve(body_timeout_seconds=1) as (_, port):
        with _connect(port) as sock:
            sock.sendall(
                b"POST /channels/c/events HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
            )
            answer = b""
            for _ in range(SLACK_SECONDS * 4):  # a byte every 0.25 s, as long as it listens
                try:
                    sock.sendall(b" ")
                    sock.settimeout(0.25)
                    answer += sock.recv(65536)
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
                if not answer or answer.endswith(b"}"):
                    break
            sock.settimeout(SLACK_SECONDS)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        assert b'"code":"request_timeout"' in answer
        assert b"connection: close" in answer.lower()


def test_an_idle_kept_alive_connection_outlives_a_client_pools_expiry(serve: Serve) -> None:
    """By default the client ends an idle connection, not the server: httpx drops one
    idle for 5 s, and a server that closed it then (uvicorn's default) could meet the
    next POST in flight, a reset the client cannot retry (seen as a flaky ReadError)."""
    idle = httpx.Limits().keepalive_expiry
    assert idle is not None
    with serve() as (_, port), _connect(port) as sock:
        for pause in (0, idle + 0.5):
            time.sleep(pause)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = _read_until(sock, b"", lambda received: received.endswith(b"}"))
            assert answer.startswith(b"HTTP/1.1 200"), answer


def test_an_idle_event_stream_outlives_the_header_timeout(serve: Serve) -> None:
    with serve(header_timeout_seconds=0.5, heartbeat_seconds=0.5) as (_, port):
        with _connect(port) as sock:
            sock.sendall(b"GET /channels/idle/events HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while received.count(b":\n\n") < 6:  # six heartbeats: six header timeouts
                chunk = sock.recv(65536)
                assert chunk, received
                received += chunk
        assert received.startswith(b"HTTP/1.1 200")


def test_connections_beyond_the_bound_are_closed_at_once_and_streams_keep_theirs(
    serve: Serve,
) -> None:
    with serve(max_connections=2, heartbeat_seconds=0.5) as (_, port):
        streams = [_connect(port) for _ in range(2)]
        for stream in streams:
            stream.sendall(b"GET /channels/held/events HTTP/1.1\r\nHost: x\r\n\r\n")
            assert stream.recv(65536).startswith(b"HTTP/1.1 200")
        with _connect(port) as third:
            with suppress(BrokenPipeError, ConnectionResetError):
                third.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_until_closed(third) == b""  # a network error: EventSource retries
        streams.pop().close()
        for _ in range(SLACK_SECONDS * 10):  # until the server has seen it go
            try:
                if _healthy(port):
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("no room came back after a stream closed")
        received = b""
        while b":\n\n" not in received:  # the stream that stayed still beats
            chunk = streams[0].recv(65536)
            assert chunk, received
            received += chunk
        streams[0].close()


def test_a_pipelined_head_behind_an_open_stream_is_bounded_too(serve: Serve) -> None:
    with serve(max_header_bytes=4096, heartbeat_seconds=0.5, max_session_seconds=3) as (http, port):
        with _connect(port) as sock:
            sock.sendall(b"GET /channels/piped/events HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            with suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 65_536)
            if http == "httptools":  # h11 stops reading a pipelined request instead
                # Returns once the server closes (a TimeoutError if it never did) ...
                received = _read_until_closed(sock)
                assert b'"status":"ok"' not in received  # ... and nothing was served
        assert _healthy(port)


def _read_until(sock: socket.socket, received: bytes, done: Callable[[bytes], bool]) -> bytes:
    while not done(received):
        chunk = sock.recv(65536)
        assert chunk, f"closed after {received!r}"
        received += chunk
    return received


def test_a_stream_whose_client_left_behind_a_pipelined_request_fails_no_publish(
    serve: Serve,
) -> None:
    """uvicorn marks only a connection's newest request disconnected when it goes:
    a stream with a request pipelined behind it never learns, and its connection's
    transport (uvloop's) raises on a write once closed. That must end that stream
    alone, never the publish whose events the feed was writing, nor the others'."""
    stream = b"GET /channels/piped/events HTTP/1.1\r\nHost: x\r\n\r\n"
    with serve(heartbeat_seconds=30, max_session_seconds=30) as (_, port):
        publish_url = f"http://127.0.0.1:{port}/channels/piped/events"
        with _connect(port) as watcher, _connect(port) as gone:
            watcher.sendall(stream)
            gone.sendall(stream + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            seen = [_read_until(s, b"", lambda r: b"\r\n\r\n" in r) for s in (watcher, gone)]
            # Once both streams hold this first event, both are attached to the feed.
            assert httpx.post(publish_url, json={"data": 0}).status_code == 201
            seen = [
                _read_until(s, r, lambda r: b"data:" in r)
                for s, r in zip((watcher, gone), seen, strict=True)
            ]
            gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            gone.close()  # a reset, which the server meets on its next write
            for n in range(1, 6):
                response = httpx.post(publish_url, json={"data": n})
                assert response.status_code == 201, response.text
            received = _read_until(watcher, seen[0], lambda r: r.count(b"data:") == 6)
            data = [line for line in received.split(b"\n") if line.startswith(b"data:")]
            assert data == [b"data: %d" % n for n in range(6)]
        assert _healthy(port)


async def test_finished_requests_leave_no_garbage_for_the_collector(
    gateway: Callable[..., GatewayServer],
) -> None:
    """A request's cycle (its transport, flow control, events and buffers) is freed
    when its connection goes, not left as cyclic garbage: at a thousand sessions a
    full collection of what they left behind paused the loop for tens of ms."""
    server = gateway(max_session_seconds=60)
    url = f"{server.url}/channels/collected/events"
    gc.collect()
    gc.disable()  # what this test's requests leave cyclic stays for the count below
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            readers = [
                asyncio.create_task(read_session(http, url, stop=lambda events: len(events) == 2))
                for _ in range(5)
            ]
            await asyncio.sleep(0.5)  # every session has caught up: attached
            for n in range(2):
                await publish(http, server.url, "collected", {"data": n})
            sessions = await asyncio.gather(*readers)
        assert all(len(session.events) == 2 for session in sessions)
        for _ in range(100):  # until the server has seen every client leave
            if not server.hub.feeds:
                break
            await asyncio.sleep(0.05)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = {type(o).__qualname__ for o in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert not server.hub.feeds
    assert not left & {"RequestResponseCycle", "_ChunkWriter", "FlowControl", "TCPTransport"}


def test_the_rest_of_a_body_answered_early_is_dropped_and_the_connection_serves_on(
    serve: Serve,
) -> None:
    """A publish declaring a body over the limit is answered 413 before its body
    arrives. What the client sends after that answer is the rest of that body, no
    head too large (a 431 a client would read as its next request's answer); a
    reset while it still sends could lose the 413 itself."""
    body = b'{"data": "' + b"x" * 70_000 + b'"}'
    head = b"POST /channels/early/events HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
    bounds = {"max_request_bytes": 10_000, "max_header_bytes": 1024}
    with serve(**bounds) as (_, port), _connect(port) as sock:
        sock.sendall(head + b"content-length: %d\r\n\r\n" % len(body) + body[:1000])
        answered = _read_until(sock, b"", lambda r: b"payload_too_large" in r)
        assert answered.startswith(b"HTTP/1.1 413 ")
        for start in range(1000, len(body), 4096):  # each write well over a head's bound
            sock.sendall(body[start : start + 4096])
            time.sleep(0.01)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        after = _read_until(sock, answered, lambda r: r.count(b"HTTP/1.1") == 2)
        assert after[len(answered) :].startswith(b"HTTP/1.1 200 "), after
