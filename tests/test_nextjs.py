"""The Next.js example (``examples/nextjs``) built and served by Next itself, against a
real ``sse-gateway dev`` with auth on, driven in Debian's headless Chromium: its
``useSSE`` hook shows two channels live across token expiries without loss, and
holds one connection under React strict mode. npm installs the example from its
lockfile (``npm ci``), so this test needs Node.js and the npm registry."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import BrowserContext, Page

from tests.browser_client import SECRET, RequestLog, bearer, mint
from tests.eventstream import seq_of
from tests.servers import GatewayProcess, free_port, publish

StartProcess = Callable[..., GatewayProcess]
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "nextjs"
CHANNELS = ["news", "user:7"]  # the demo user's channels (examples/nextjs/lib/session.ts)
PUBLISHER = mint(publish=CHANNELS, ttl=3600)

pytestmark = pytest.mark.timeout(420)  # npm ci and next build come first


# Next.js reports usage unless told not to; this machine's network would refuse it.
QUIET = {**os.environ, "NEXT_TELEMETRY_DISABLED": "1"}


def _run(*command: str) -> None:
    done = subprocess.run(
        command, cwd=EXAMPLE, env=QUIET, capture_output=True, text=True, timeout=400
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")


@pytest.fixture(scope="module")
def built_example() -> Path:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            "the Next.js example needs Node.js 20.9+ with npm on PATH (apt-get install nodejs npm)"
        )
    _run(npm, "ci", "--no-audit", "--no-fund", "--prefer-offline")
    _run(npm, "run", "build")
    return EXAMPLE


class NextServer:
    """``next start`` (or ``next dev``) of the example on a port of its own."""

    def __init__(self, command: str, port: int, gateway_url: str, token_ttl: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._command = command
        self._env = {
            **QUIET,
            "SSE_GATEWAY_URL": gateway_url,
            "SSE_GATEWAY_AUTH_SECRET": SECRET,
            "SSE_TOKEN_TTL_SECONDS": str(token_ttl),
        }
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> NextServer:
        next_bin = str(EXAMPLE / "node_modules" / ".bin" / "next")
        self._process = subprocess.Popen(
            [next_bin, self._command, "--hostname", "127.0.0.1", "--port", str(self.port)],
            cwd=EXAMPLE,
            env=self._env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # next starts workers: stop them with it
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"next {self._command} exited with {self._process.returncode}")
            try:
                if httpx.get(f"{self.url}/api/sse-token", timeout=30).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError(f"next {self._command} did not answer within 60 s")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()


@pytest.fixture
def next_server(
    built_example: Path, gateway_process: StartProcess
) -> Iterator[Callable[..., tuple[NextServer, GatewayProcess]]]:
    """A factory: the example under ``next <command>``, minting tokens that live
    ``token_ttl`` seconds, and the gateway it talks to (with ``settings``), which
    allows the example's origin: the page connects to it directly."""
    servers: list[NextServer] = []

    def start(
        command: str, token_ttl: int, **settings: object
    ) -> tuple[NextServer, GatewayProcess]:
        port = free_port()
        origin = f"http://127.0.0.1:{port}"
        gateway = gateway_process(
            auth_secret=SECRET, auth_leeway_seconds=0, cors_allowed_origins=origin, **settings
        )
        servers.append(NextServer(command, port, gateway.url, token_ttl).start())
        return servers[-1], gateway

    yield start
    for server in servers:
        server.stop()


async def _shown(page: Page) -> dict[str, list[tuple[str, object]]]:
    """What the page lists, by channel, in its order: (id, data)."""
    rows = await page.eval_on_selector_all(
        "li[data-id]",
        "rows => rows.map(r => [r.dataset.channel, r.dataset.id, r.lastChild.textContent])",
    )
    shown: dict[str, list[tuple[str, object]]] = {}
    for channel, event_id, data in rows:
        shown.setdefault(channel, []).append((event_id, json.loads(data)))
    return shown


async def test_nextjs_page_shows_both_channels_live_across_token_expiries_without_loss(
    next_server: Callable[..., tuple[NextServer, GatewayProcess]],
    browser: BrowserContext,
    http: httpx.AsyncClient,
) -> None:
    server, gateway = next_server("start", token_ttl=3, max_session_seconds=2, retry_ms=100)
    page = await browser.new_page()
    requests, token_requests = RequestLog(page), RequestLog(page, "/api/sse-token")
    await page.goto(server.url)
    await page.wait_for_function(
        "document.querySelector('[data-testid=state]')?.textContent === 'open'"
    )

    async def publish_paced(channel: str) -> list[tuple[str, object]]:
        published = []
        for n in range(30):
            (event_id,) = await publish(
                http, gateway.url, channel, {"data": {"n": n}}, **bearer(PUBLISHER)
            )
            published.append((event_id, {"n": n}))
            await asyncio.sleep(0.25)
        return published

    batches = await asyncio.gather(*(publish_paced(channel) for channel in CHANNELS))
    await page.wait_for_function(
        "document.querySelectorAll('li[data-id]').length >= 60", timeout=20_000
    )
    await asyncio.sleep(1.5)  # a late duplicate would be listed by now

    assert await _shown(page) == dict(zip(CHANNELS, batches, strict=True))
    assert all(sorted(b, key=lambda e: seq_of(e[0])) == b for b in batches)
    # 7.5 s of publishing with 3 s tokens: the first token and at least two refreshes,
    # each after the gateway refused the expired one.
    assert len(token_requests.sent) >= 3, token_requests.sent
    # Refusals are probed for, and never in a loop: about one probe per token (the
    # exact count varies with where each 3 s token lapses on a loaded machine).
    assert 1 <= len(requests.of("fetch")) <= len(token_requests.sent) + 1
    # With 3 s tokens the page may be mid-refresh right now: it must come back open.
    await page.wait_for_function(
        "document.querySelector('[data-testid=state]')?.textContent === 'open'", timeout=15_000
    )

    # The secret minted tokens on the server only: it is in no page and no browser bundle.
    assert SECRET not in await page.content()
    for bundle in (EXAMPLE / ".next" / "static").rglob("*.js"):
        assert SECRET not in bundle.read_text(errors="replace"), bundle


async def test_nextjs_strict_mode_double_mount_opens_one_connection(
    next_server: Callable[..., tuple[NextServer, GatewayProcess]],
    browser: BrowserContext,
    http: httpx.AsyncClient,
) -> None:
    """``next dev`` mounts every component, unmounts it and mounts it again: the hook's
    first stream must close before it makes any request, and the second one live on."""
    server, gateway = next_server("dev", token_ttl=300)
    page = await browser.new_page()
    requests, token_requests = RequestLog(page), RequestLog(page, "/api/sse-token")
    await page.goto(server.url, timeout=90_000)  # the first request compiles the page
    state = "document.querySelector('[data-testid=state]')?.textContent"
    await page.wait_for_function(f"{state} === 'open'", timeout=60_000)
    await publish(http, gateway.url, "news", {"data": "once"}, **bearer(PUBLISHER))
    await page.wait_for_function("document.querySelectorAll('li[data-id]').length === 1")
    await asyncio.sleep(1)

    assert [s.kind for s in requests.sent] == ["eventsource"]
    assert len(token_requests.sent) == 1
    assert list(await _shown(page)) == ["news"]


async def test_nextjs_page_renders_the_last_20_server_side_then_follows_without_a_gap(
    next_server: Callable[..., tuple[NextServer, GatewayProcess]],
    browser: BrowserContext,
    http: httpx.AsyncClient,
) -> None:
    """The server renders each channel's last 20 (history); the browser's stream rewinds
    20 and follows on from the newest rendered event. The page's scripts are held back
    while 25 more are published: more than the rewind reaches, so the client reads the
    rest with history(), and every event is listed once, in order."""
    server, gateway = next_server("start", token_ttl=300, max_session_seconds=30)

    async def publish_many(channel: str, count: int, start: int) -> list[tuple[str, object]]:
        published = []
        for n in range(start, start + count):
            (event_id,) = await publish(
                http, gateway.url, channel, {"data": {"n": n}}, **bearer(PUBLISHER)
            )
            published.append((event_id, {"n": n}))
        return published

    old = {"news": await publish_many("news", 30, 0), "user:7": await publish_many("user:7", 3, 0)}
    html = (await http.get(server.url)).text  # no script runs here: what the server rendered
    for channel, events in old.items():
        for event_id, _ in events[-20:]:
            assert f'data-channel="{channel}" data-id="{event_id}"' in html
        for event_id, _ in events[:-20]:
            assert f'data-id="{event_id}"' not in html

    scripts_held = asyncio.Event()
    release = asyncio.Event()

    async def hold_scripts(route: Any) -> None:
        scripts_held.set()
        await release.wait()
        await route.continue_()

    page = await browser.new_page()
    await page.route("**/_next/static/**/*.js", hold_scripts)
    loading = asyncio.create_task(page.goto(server.url))
    await asyncio.wait_for(scripts_held.wait(), 60)
    between = await publish_many("news", 25, 30)  # rendered, not yet connected
    release.set()
    await loading
    await page.wait_for_function(
        "document.querySelector('[data-testid=state]')?.textContent === 'open'", timeout=30_000
    )
    live = await publish_many("news", 3, 55)
    expected = {"news": old["news"][-20:] + between + live, "user:7": old["user:7"]}
    await page.wait_for_function(
        f"document.querySelectorAll('li[data-id]').length >= {sum(map(len, expected.values()))}",
        timeout=20_000,
    )
    await asyncio.sleep(1)  # a late duplicate would be listed by now
    assert await _shown(page) == expected


def test_client_declarations_type_check(built_example: Path) -> None:
    """``sse-gateway.d.ts`` on its own under ``tsc --strict`` (the example's build
    skips declaration files, as Next's default ``skipLibCheck`` does)."""
    declarations = built_example.parent.parent / "clients" / "js" / "sse-gateway.d.ts"
    tsc = str(built_example / "node_modules" / ".bin" / "tsc")
    _run(tsc, "--noEmit", "--strict", "--lib", "dom,es2022", str(declarations))
