"""The browser client (``clients/js/sse-gateway.js``) in Debian's headless Chromium
against real ``sse-gateway dev`` processes: exactly once across channels, session
ends and token expiries; refusals that close with the reason and make no further
request; backoff while something in front of the gateway answers errors."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import BrowserContext

from tests.browser_client import SECRET, RequestLog, Tokens, bearer, mint, open_stream, seen
from tests.servers import GatewayProcess, GatewayServer, publish

StartProcess = Callable[..., GatewayProcess]
ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "js" / "sse-gateway.js"
SERVED = ROOT / "gateway" / "static" / "sse-gateway.js"
PUBLISHER = mint(publish=["*", "orders:*", "user:*"], ttl=3600)
AUTH = {"auth_secret": SECRET, "auth_leeway_seconds": 0}


def test_served_client_is_the_client() -> None:
    assert SERVED.read_bytes() == CLIENT.read_bytes(), (
        "gateway/static/sse-gateway.js differs from clients/js/sse-gateway.js: "
        "cp clients/js/sse-gateway.js gateway/static/sse-gateway.js"
    )


async def test_gateway_serves_the_client_as_javascript(
    gateway: Callable[..., GatewayServer], http: httpx.AsyncClient
) -> None:
    response = await http.get(f"{gateway().url}/sse-gateway.js")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.content == CLIENT.read_bytes()


def _by_channel(messages: list[dict[str, Any]]) -> dict[str, list[tuple[Any, ...]]]:
    result: dict[str, list[tuple[Any, ...]]] = {}
    for m in messages:
        result.setdefault(m["channel"], []).append((m["id"], m["event"], m["data"]))
    return result


async def _publish_paced(
    http: httpx.AsyncClient, url: str, channel: str, count: int, pause: float
) -> list[tuple[Any, ...]]:
    published = []
    for n in range(count):
        event = "status" if n % 3 == 0 else None
        body = {"event": event, "data": {"n": n}} if event else {"data": {"n": n}}
        (event_id,) = await publish(http, url, channel, body, **bearer(PUBLISHER))
        published.append((event_id, event, {"n": n}))
        await asyncio.sleep(pause)
    return published


async def test_client_delivers_every_event_once_across_channels_sessions_and_token_expiries(
    gateway_process: StartProcess, browser: BrowserContext, http: httpx.AsyncClient
) -> None:
    server = gateway_process(max_session_seconds=1.5, retry_ms=100, **AUTH)
    channels = ["orders:1", "orders:2", "user:7"]
    tokens = Tokens(subscribe=["orders:*", "user:7"], ttl=3)
    page = await browser.new_page()
    await open_stream(page, server.url, tokens, channels=channels, backoff={"initialMs": 200})
    await page.wait_for_function("window.stream.state === 'open'")

    batches = await asyncio.gather(
        *(_publish_paced(http, server.url, channel, 40, 0.2) for channel in channels)
    )
    await page.wait_for_function("window.seen.message.length >= 120", timeout=30_000)
    await asyncio.sleep(2)  # another session and another token: a late duplicate shows by now
    # Open again: every refusal so far has had its new token (a 401 is reported before
    # the backoff that precedes the token call, which a loaded machine stretches).
    await page.wait_for_function("window.stream.state === 'open'", timeout=15_000)
    log = await seen(page)

    assert _by_channel(log["message"]) == dict(zip(channels, batches, strict=True))
    assert log["reset"] == []
    expiries = [e for e in log["error"] if e["status"] == 401]
    assert len(expiries) >= 3, log["error"]
    assert all(e["retrying"] and e["code"] == "unauthorized" for e in log["error"])
    assert tokens.calls == len(expiries) + 1
    assert log["state"].count("open") >= 6  # sessions ended by time and by token expiry
    assert "closed" not in log["state"]


async def test_client_loses_nothing_when_its_first_token_expires_before_any_event(
    gateway_process: StartProcess, browser: BrowserContext, http: httpx.AsyncClient
) -> None:
    """The first connection delivers nothing before its token expires; what is published
    while the client fetches its next token must still arrive. The client can resume
    there only if it learned a cursor on the first connection, which fired no message."""
    server = gateway_process(max_session_seconds=30, retry_ms=100, **AUTH)
    channels = ["orders:1", "user:7"]
    meanwhile: list[list[str]] = []

    async def publish_meanwhile(call: int) -> None:
        if call == 2:  # the first token expired: the page is between two connections
            for channel in channels:
                body = {"events": [{"data": 1}, {"data": 2}]}
                meanwhile.append(
                    await publish(http, server.url, channel, body, **bearer(PUBLISHER))
                )

    tokens = Tokens(subscribe=["orders:*", "user:*"], ttl=2, before=publish_meanwhile)
    page = await browser.new_page()
    await open_stream(page, server.url, tokens, channels=channels, backoff={"initialMs": 200})
    reopened = "window.seen.state.filter((s) => s === 'open').length >= 2"
    await page.wait_for_function(reopened, timeout=10_000)
    await asyncio.sleep(1)
    log = await seen(page)

    assert meanwhile, "the token expired, yet the client asked for no new one"
    assert {c: [m[0] for m in ms] for c, ms in _by_channel(log["message"]).items()} == dict(
        zip(channels, meanwhile, strict=True)
    )
    assert log["reset"] == []
    assert log["error"][0]["status"] == 401


@pytest.mark.parametrize(
    ("channels", "token_key", "status", "code", "words"),
    [
        (["orders:1", "secret:1"], SECRET, 403, "forbidden", "'secret:1'"),
        (["orders:1", "bad channel"], SECRET, 400, "invalid_channel", "bad channel"),
        ([f"orders:{n}" for n in range(17)], SECRET, 400, "too_many_channels", "16"),
        (["orders:1"], None, 401, "unauthorized", "a token is required"),
    ],
    ids=["forbidden", "invalid-channel", "too-many-channels", "no-token"],
)  # fmt: skip
async def test_client_closes_with_the_reason_and_makes_no_further_request(
    gateway_process: StartProcess,
    browser: BrowserContext,
    channels: list[str],
    token_key: str | None,
    status: int,
    code: str,
    words: str,
) -> None:
    server = gateway_process(**AUTH)
    page = await browser.new_page()
    requests = RequestLog(page)
    await open_stream(
        page,
        server.url,
        Tokens(subscribe=["orders:*"], key=token_key) if token_key else None,
        channels=channels,
        backoff={"initialMs": 100, "maxMs": 200},
    )
    await page.wait_for_function("window.stream.state === 'closed'", timeout=10_000)
    await asyncio.sleep(2)  # ten backoff periods: a retry would have been made by now
    log = await seen(page)
    (error,) = log["error"]
    assert (error["status"], error["code"], error["retrying"]) == (status, code, False)
    assert words in error["message"]
    assert log["state"] == ["connecting", "closed"]
    assert await page.evaluate("window.stream.error.message") == error["message"]
    # One EventSource request, and the one fetch that learned why it failed.
    assert [s.kind for s in requests.sent] == ["eventsource", "fetch"]


async def test_client_closes_when_two_fresh_tokens_in_a_row_are_refused(
    gateway_process: StartProcess, browser: BrowserContext
) -> None:
    """One fresh token refused may have lapsed on its way; a second is not asked for
    a third time (here the app signs with a secret the gateway does not know)."""
    server = gateway_process(**AUTH)
    page = await browser.new_page()
    requests = RequestLog(page)
    tokens = Tokens(subscribe=["orders:*"], key="another-secret-that-the-gateway-does-not-know")
    backoff = {"initialMs": 100, "maxMs": 200}
    await open_stream(page, server.url, tokens, channels=["orders:1"], backoff=backoff)
    await page.wait_for_function("window.stream.state === 'closed'", timeout=10_000)
    await asyncio.sleep(2)  # ten backoff periods: a retry would have been made by now
    log = await seen(page)

    assert [(e["status"], e["retrying"]) for e in log["error"]] == [(401, True), (401, False)]
    assert log["error"][1]["message"].startswith("the gateway refused two new tokens from token()")
    assert log["state"] == ["connecting", "reconnecting", "closed"]
    assert tokens.calls == 2
    assert [s.kind for s in requests.sent] == ["eventsource", "fetch"] * 2


async def test_close_makes_no_request_before_the_first_connection_and_none_after(
    gateway_process: StartProcess, browser: BrowserContext, http: httpx.AsyncClient
) -> None:
    server = gateway_process(**AUTH)
    tokens = Tokens(subscribe=["a"])
    page = await browser.new_page()
    requests = RequestLog(page)
    await page.expose_function("mintToken", tokens)
    await page.goto(f"{server.url}/healthz")
    # React strict mode mounts, unmounts and mounts again in one task: the first
    # stream must not even ask for a token.
    await page.evaluate(
        """async () => {
          const { connect } = await import("/sse-gateway.js");
          const options = { channels: ["a"], token: () => window.mintToken() };
          connect(options).close();
          window.stream = connect(options);
          window.messages = [];
          window.stream.addEventListener("message", (e) => window.messages.push(e.detail));
        }"""
    )
    await page.wait_for_function("window.stream.state === 'open'")
    await publish(http, server.url, "a", {"data": "before"}, **bearer(PUBLISHER))
    await page.wait_for_function("window.messages.length === 1")
    assert (tokens.calls, len(requests.sent)) == (1, 1)

    await page.evaluate("window.stream.close()")
    await publish(http, server.url, "a", {"data": "after"}, **bearer(PUBLISHER))
    await asyncio.sleep(1.5)
    assert [m["data"] for m in await page.evaluate("window.messages")] == ["before"]
    assert await page.evaluate("window.stream.state") == "closed"
    assert (tokens.calls, len(requests.sent)) == (1, 1)


class Front:
    """A TCP front for a gateway, on a port of its own: it forwards bytes both ways
    or, while ``unavailable``, cuts what it was forwarding and answers every request
    with 503, as a load balancer without a healthy target does."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._unavailable = False
        self._piped: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Front:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self.unavailable = True  # cuts the piped connections
        self._server.close()

    @property
    def unavailable(self) -> bool:
        return self._unavailable

    @unavailable.setter
    def unavailable(self, value: bool) -> None:
        self._unavailable = value
        if value:
            for writer in self._piped:
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            if self._unavailable:
                await reader.readuntil(b"\r\n\r\n")
                body = b"no healthy upstream"
                writer.write(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
            else:
                up_reader, up_writer = await asyncio.open_connection(
                    "127.0.0.1", self._upstream_port
                )
                self._piped.update((writer, up_writer))
                try:
                    await asyncio.gather(
                        self._pipe(reader, up_writer), self._pipe(up_reader, writer)
                    )
                finally:
                    self._piped.difference_update((writer, up_writer))
                    up_writer.close()
        writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        finally:
            writer.close()


async def test_client_backs_off_while_the_gateway_is_unavailable_then_resumes_without_loss(
    gateway_process: StartProcess, browser: BrowserContext, http: httpx.AsyncClient
) -> None:
    server = gateway_process(retry_ms=100)
    initial_ms, max_ms = 200, 1600
    async with Front(server.port) as front:
        page = await browser.new_page()
        requests = RequestLog(page)
        backoff = {"initialMs": initial_ms, "maxMs": max_ms}
        await open_stream(page, front.url, channels=["jobs:1", "jobs:2"], backoff=backoff)
        await page.wait_for_function("window.stream.state === 'open'")
        before = [await publish(http, server.url, "jobs:1", {"data": n}) for n in range(3)]
        await page.wait_for_function("window.seen.message.length === 3")

        front.unavailable = True
        outage = time.monotonic()
        during = [await publish(http, server.url, c, {"data": c}) for c in ("jobs:1", "jobs:2")]
        await asyncio.sleep(6)
        attempts = [s.at for s in requests.of("eventsource", since=outage)]
        front.unavailable = False
        await page.wait_for_function("window.seen.message.length === 5", timeout=10_000)
        after = await publish(http, server.url, "jobs:2", {"data": "after"})
        await page.wait_for_function("window.seen.message.length === 6")
        await asyncio.sleep(0.5)
        log = await seen(page)

    # EventSource's own reconnect, then the client's, the n-th at least half of
    # min(max, initial x 2^n) after the one before: 6 to 10 in 6 s, never a loop.
    assert 5 <= len(attempts) <= 11, attempts
    for n, (a, b) in enumerate(itertools.pairwise(attempts)):
        assert b - a >= min(max_ms, initial_ms * 2**n) / 2 / 1000, attempts
    failures = [(e["status"], e["code"], e["retrying"]) for e in log["error"]]
    assert set(failures) == {(503, "http_503", True)}
    got = {c: [m[0] for m in ms] for c, ms in _by_channel(log["message"]).items()}
    assert got == {
        "jobs:1": [i for ids in before for i in ids] + during[0],
        "jobs:2": during[1] + after,
    }


async def test_client_rewinds_each_channel_then_follows_without_loss_or_repeat(
    gateway_process: StartProcess, browser: BrowserContext, http: httpx.AsyncClient
) -> None:
    """rewind renders the last N of each channel and follows on from there, across
    sessions and token expiries (each resumes at the cursor, none rewinds again)."""
    server = gateway_process(max_session_seconds=1.5, retry_ms=100, **AUTH)
    before = {
        "orders:1": await _publish_paced(http, server.url, "orders:1", 25, 0),
        "user:7": await _publish_paced(http, server.url, "user:7", 3, 0),
    }
    tokens = Tokens(subscribe=["orders:*", "user:7"], ttl=3)
    page = await browser.new_page()
    await open_stream(
        page, server.url, tokens, channels=list(before), rewind=20, backoff={"initialMs": 200}
    )
    await page.wait_for_function("window.seen.message.length >= 23", timeout=15_000)
    live = await asyncio.gather(
        *(_publish_paced(http, server.url, channel, 12, 0.3) for channel in before)
    )
    await page.wait_for_function("window.seen.message.length >= 47", timeout=30_000)
    await asyncio.sleep(2)  # another session and another token: a repeat shows by now
    log = await seen(page)

    assert _by_channel(log["message"]) == {
        "orders:1": before["orders:1"][-20:] + live[0],
        "user:7": before["user:7"] + live[1],
    }
    assert log["reset"] == []  # the rewind's own start is no reset to the page
    assert log["state"].count("open") >= 3
    assert any(e["status"] == 401 for e in log["error"])  # a token expired on the way


_HISTORY = """async ({ channel, options }) => {
  const { history } = await import("/sse-gateway.js");
  try {
    return await history(channel, options);
  } catch (err) {
    return { error: { name: err.name, status: err.status, code: err.code, message: err.message } };
  }
}"""


async def test_client_history_pages_back_with_the_token_and_says_why_it_fails(
    gateway_process: StartProcess,
    gateway: Callable[..., GatewayServer],
    browser: BrowserContext,
    http: httpx.AsyncClient,
) -> None:
    server = gateway_process(**AUTH)
    published = await _publish_paced(http, server.url, "orders:9", 17, 0)
    page = await browser.new_page()
    await page.goto(f"{server.url}/healthz")
    await page.expose_function("mintToken", Tokens(subscribe=["orders:*"]))
    pages, before = [], None
    while True:
        options = {"limit": 5, "before": before, "token": mint(subscribe=["orders:9"])}
        answer = await page.evaluate(_HISTORY, {"channel": "orders:9", "options": options})
        pages.append(answer)
        if answer["next_before"] is None:
            break
        before = answer["next_before"]
    events = [e for answer in reversed(pages) for e in answer["events"]]
    assert [(e["id"], e["event"], e["data"]) for e in events] == published
    assert all(e["channel"] == "orders:9" for e in events)
    assert len(pages) == 4

    refused = await page.evaluate(
        _HISTORY, {"channel": "orders:9", "options": {"limit": 0, "token": mint(["orders:9"])}}
    )
    assert refused["error"]["name"] == "HistoryError"
    assert (refused["error"]["status"], refused["error"]["code"]) == (400, "invalid_limit")
    unauthorized = await page.evaluate(_HISTORY, {"channel": "orders:9", "options": {}})
    assert (unauthorized["error"]["status"], unauthorized["error"]["code"]) == (401, "unauthorized")

    # From a page of another origin that the gateway does not allow: what to change.
    other = gateway()
    await page.goto(f"{other.url}/healthz")
    blocked = await page.evaluate(
        _HISTORY,
        {"channel": "orders:9", "options": {"url": server.url, "token": mint(["orders:9"])}},
    )
    assert blocked["error"]["code"] == "network_error"
    assert f"add {other.url} to its SSE_GATEWAY_CORS_ALLOWED_ORIGINS" in blocked["error"]["message"]


async def test_a_stream_the_gateway_refuses_cross_origin_says_which_origin_to_allow(
    gateway: Callable[..., GatewayServer], browser: BrowserContext
) -> None:
    allowed, page_origin = gateway(cors_allowed_origins=["http://localhost:3000"]), gateway()
    page = await browser.new_page()
    await page.goto(f"{page_origin.url}/healthz")
    await page.evaluate(
        """async (url) => {
          const { connect } = await import("/sse-gateway.js");
          window.errors = [];
          const stream = connect({ url, channels: ["c"], backoff: { initialMs: 60000 } });
          stream.addEventListener("error", (e) => window.errors.push(e.detail));
        }""",
        f"{allowed.url}/events",
    )
    await page.wait_for_function("window.errors.length >= 1", timeout=15_000)
    (failure,) = await page.evaluate("window.errors")
    assert (failure["code"], failure["retrying"]) == ("network_error", True)
    assert f"add {page_origin.url} to its SSE_GATEWAY_CORS_ALLOWED_ORIGINS" in failure["message"]
    assert "localhost and 127.0.0.1 are different origins" in failure["message"]
