"""Function URL events to ASGI: the pure mapping, checked against what uvicorn makes of
the same request line, and read back through Starlette as the app reads it."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvicorn
from starlette.requests import Request

from gateway.auth import bearer_token
from gateway.request_bounds import DEADLINE_EXTENSION
from handlers.function_url import PRELUDE_SEPARATOR, InvalidEvent, prelude, to_asgi
from tests.lambda_events import load_event

RequestLine = Callable[[str], Awaitable[dict[str, Any]]]


@pytest.fixture
async def uvicorn_scope() -> AsyncIterator[RequestLine]:
    """Sends a raw request line to a real uvicorn and returns the scope its app saw."""
    scopes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def record(scope: Any, receive: Any, send: Any) -> None:
        scopes.put_nowait(dict(scope))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(record, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110
        await asyncio.sleep(0.01)

    async def send_request_line(target: str) -> dict[str, Any]:
        reader, writer = await asyncio.open_connection(*sock.getsockname())
        writer.write(f"GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        await reader.read()
        writer.close()
        return await scopes.get()

    yield send_request_line
    server.should_exit = True
    await serving


@pytest.mark.parametrize(
    ("raw_path", "raw_query"),
    [
        ("/channels/orders%3A42/events", "last_event_id=5f0c2a9e%2D1&token=a%2Eb%2Ec"),
        ("/channels/orders:42/events", "x=1&x=2&empty=&flag"),
        ("/channels/caf%C3%A9/events", "q=%E2%9C%93+plus%2B"),
        ("/channels/a%2Fb/events", ""),
        ("/channels/100%25/events", "token=%25"),
    ],
)
async def test_to_asgi_decodes_the_path_as_uvicorn_does(
    uvicorn_scope: RequestLine, raw_path: str, raw_query: str
) -> None:
    seen = await uvicorn_scope(raw_path + (f"?{raw_query}" if raw_query else ""))
    event = load_event("subscribe")
    event["rawPath"], event["rawQueryString"] = raw_path, raw_query
    scope, _ = to_asgi(event)
    for key in ("path", "raw_path", "query_string"):
        assert scope[key] == seen[key], key


def test_to_asgi_passes_encoded_query_values_repeated_keys_and_cookies_to_starlette() -> None:
    scope, _ = to_asgi(load_event("subscribe_encoded"))
    request = Request(scope)
    assert scope["path"] == "/channels/orders:42/events"
    assert scope["raw_path"] == b"/channels/orders%3A42/events"
    assert request.query_params.getlist("x") == ["1", "2"]
    assert request.query_params["token"] == "a.b.c"
    assert request.cookies == {"theme": "dark", "sse_token": "cookie.token"}
    # The query token wins over the cookie, decoded; the cookie is the fallback.
    assert bearer_token(request.headers, request.query_params, request.cookies) == "a.b.c"
    assert bearer_token(request.headers, {}, request.cookies) == "cookie.token"


def test_to_asgi_decodes_a_base64_body_and_refuses_a_false_one() -> None:
    event = load_event("publish_batch_base64")
    scope, body = to_asgi(event, deadline=12.5)
    assert body == base64.b64decode(event["body"])
    assert json.loads(body)["events"]
    assert scope["method"] == "POST" and scope["extensions"] == {DEADLINE_EXTENSION: 12.5}
    event["body"] = "not base64!"
    with pytest.raises(InvalidEvent, match="base64"):
        to_asgi(event)


@pytest.mark.parametrize(
    "event",
    [[], {"rawPath": "/"}, {"requestContext": {}}, {**load_event("healthz"), "body": {"a": 1}}],
)
def test_to_asgi_refuses_what_is_not_a_function_url_event(event: Any) -> None:
    with pytest.raises(InvalidEvent):
        to_asgi(event)


def test_prelude_moves_set_cookie_to_cookies_and_joins_repeated_headers() -> None:
    document, separator, rest = prelude(
        200,
        [
            (b"set-cookie", b"a=1"),
            (b"Vary", b"Origin"),
            (b"vary", b"Accept"),
            (b"set-cookie", b"b=2"),
        ],
    ).partition(PRELUDE_SEPARATOR)
    assert (separator, rest) == (PRELUDE_SEPARATOR, b"")
    assert json.loads(document) == {
        "statusCode": 200,
        "headers": {"vary": "Origin, Accept"},
        "cookies": ["a=1", "b=2"],
    }
