"""The demo page in a real browser: Debian's headless Chromium, native EventSource,
a real ``sse-gateway dev`` process. What the page saw is read from ``window.sseLog``."""

from __future__ import annotations

import asyncio
import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageChops
from playwright.async_api import BrowserContext

from tests.browser_client import SECRET, mint
from tests.eventstream import read_session, seq_of
from tests.servers import GatewayProcess

StartProcess = Callable[..., GatewayProcess]


async def _publish_paced(
    client: httpx.AsyncClient, base_url: str, channel: str, publisher: int, count: int
) -> list[dict[str, Any]]:
    """``count`` events, every third of a type of its own: the page must show them all,
    as the envelopes it received."""
    published = []
    for n in range(count):
        value = {"publisher": publisher, "n": n}
        event = f"type-{publisher}" if n % 3 == 0 else None
        body = {"event": event, "data": value}
        response = await client.post(f"{base_url}/channels/{channel}/events", json=body)
        assert response.status_code == 201, response.text
        (event_id,) = response.json()["ids"]
        published.append({"channel": channel, "event": event, "id": event_id, "data": value})
        await asyncio.sleep(0.2)
    return published


async def test_demo_page_sees_every_event_of_every_channel_once_in_order_across_reconnects(
    gateway_process: StartProcess, browser: BrowserContext
) -> None:
    server = gateway_process(max_session_seconds=2, retry_ms=200)
    channels = ["browser-e2e", "orders:42"]
    page = await browser.new_page()
    await page.goto(f"{server.url}/?channel={channels[0]}&channel={channels[1]}")
    await page.wait_for_function("window.sseLog.opens >= 1")

    publishers = [channels[p % 2] for p in range(4)]  # two publishers per channel
    async with httpx.AsyncClient(timeout=10) as client:
        batches = await asyncio.gather(
            *(
                _publish_paced(client, server.url, channel, p, 75)
                for p, channel in enumerate(publishers)
            )
        )
    await page.wait_for_function("window.sseLog.events.length >= 300", timeout=30_000, polling=100)
    await asyncio.sleep(2.5)  # one more session: a late duplicate would show up by now
    log = await page.evaluate("window.sseLog")

    for channel in channels:
        published = [e for batch in batches for e in batch if e["channel"] == channel]
        shown = [e for e in log["events"] if e["channel"] == channel]
        assert shown == sorted(published, key=lambda e: seq_of(e["id"]))
    assert len(log["events"]) == 300
    assert log["resets"] == [] and log["errors"] == []
    assert log["opens"] >= 6  # the first connection and at least five reconnects


async def test_demo_page_publishes_through_its_form_and_shows_the_event(
    gateway_process: StartProcess, browser: BrowserContext, tmp_path: Path
) -> None:
    server = gateway_process()
    page = await browser.new_page()
    await page.goto(f"{server.url}/?channel=form-demo")
    await page.wait_for_function("window.sseLog.opens >= 1")
    before = tmp_path / "before.png"
    await page.screenshot(path=str(before))

    await page.fill("#event", "greeting")
    await page.fill("#data", '{"text": "hello from the form"}')
    await page.click("#publish button")

    item = page.locator("#events li").first
    await item.wait_for(state="visible")
    result = await page.locator("#publish-result").inner_text()
    assert result.startswith("published ")
    event_id = result.removeprefix("published ")
    cells = await item.locator("span").all_inner_texts()
    assert cells == ["form-demo", event_id, "greeting", '{"text":"hello from the form"}']
    after = tmp_path / "after.png"
    await page.screenshot(path=str(after))

    # The screenshot shows the event: where the list item is drawn, pixels changed
    # from the page before publishing, and the new ones include dark text.
    box = await item.bounding_box()
    assert box is not None
    region = (int(box["x"]), int(box["y"]), int(box["x"] + box["width"]), int(box["y"] + 20))
    shown = Image.open(after).convert("L").crop(region)
    previously = Image.open(before).convert("L").crop(region)
    assert ImageChops.difference(shown, previously).getbbox() is not None
    darkest, _ = shown.getextrema()
    assert darkest < 100


async def test_demo_page_with_auth_says_why_it_closed_then_subscribes_with_a_token(
    gateway_process: StartProcess, browser: BrowserContext
) -> None:
    server = gateway_process(auth_secret=SECRET)
    page = await browser.new_page()
    await page.goto(f"{server.url}/?channel=orders:7&channel=user:7")
    status = "document.getElementById('status').textContent"
    await page.wait_for_function(f"{status}.startsWith('closed: ')")
    assert (await page.evaluate(status)).startswith("closed: a token is required")

    await page.fill("#token", mint(subscribe=["orders:*"], publish=["orders:*"]))
    await page.click("#subscribe button")
    await page.wait_for_function(f"{status}.includes('grant')")
    assert await page.evaluate(status) == (
        "closed: the token does not grant subscribe on channel 'user:7'"
    )

    await page.fill("#channels", "orders:7 orders:8")
    await page.click("#subscribe button")
    await page.wait_for_function("window.sseLog.opens >= 1")
    await page.fill("#channel", "orders:8")
    await page.click("#publish button")
    item = page.locator("#events li").first
    await item.wait_for(state="visible")
    assert (await item.locator("span").all_inner_texts())[0] == "orders:8"


async def test_a_publisher_cannot_fire_the_browsers_own_open_and_error_handlers(
    gateway_process: StartProcess, browser: BrowserContext
) -> None:
    """``event: error`` would fire every subscriber's ``onerror`` on a healthy stream
    (``event: open``, its ``onopen``): both are refused at publish, so the page sees
    one open, no error, and the event published after them."""
    server = gateway_process(max_session_seconds=30)
    page = await browser.new_page()
    await page.goto(f"{server.url}/healthz")  # any page of the origin
    await page.evaluate(
        """() => {
            window.seen = {opens: 0, errors: [], markers: []};
            const source = new EventSource("/channels/hostile/events");
            source.onopen = () => { window.seen.opens += 1; };
            source.onerror = () => { window.seen.errors.push(source.readyState); };
            source.addEventListener("marker", (e) => { window.seen.markers.push(e.data); });
        }"""
    )
    await page.wait_for_function("window.seen.opens === 1")
    url = f"{server.url}/channels/hostile/events"
    async with httpx.AsyncClient(timeout=10) as client:
        for name in ("error", "open"):
            refused = await client.post(url, json={"event": name, "data": "forged"})
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["code"] == "invalid_event"
        marker = await client.post(url, json={"event": "marker", "data": "after"})
        assert marker.status_code == 201
    await page.wait_for_function("window.seen.markers.length === 1")
    assert await page.evaluate("window.seen") == {"opens": 1, "errors": [], "markers": ['"after"']}


README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_publishes() -> list[str]:
    """The README's own ``curl`` publish commands, joined across their continuation lines."""
    commands, current = [], ""
    for line in README.read_text().splitlines():
        if current or line.startswith("curl -s -X POST localhost:8000/channels/"):
            current += line.removesuffix("\\").strip() + " "
            if not line.endswith("\\"):
                commands.append(current.strip())
                current = ""
    return commands


async def test_demo_page_shows_what_the_readme_publishes_with_headers_and_an_id_that_resumes(
    gateway_process: StartProcess, browser: BrowserContext
) -> None:
    """A reader runs the README's curl examples, then opens the page: it shows those
    events (the last 20 on load), under column headers, and a resume command whose id
    resumes (no reset) right after the newest one."""
    server = gateway_process(max_session_seconds=30)
    commands = [c for c in _readme_publishes() if "Idempotency-Key" not in c][:2]
    assert len(commands) == 2, commands  # the single publish and the batch
    published: list[str] = []
    for command in commands:
        argv = shlex.split(command.replace("localhost:8000", f"127.0.0.1:{server.port}"))
        curl = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(curl.communicate(), 30)
        assert curl.returncode == 0, out
        published += json.loads(out)["ids"]
    page = await browser.new_page()
    await page.goto(f"{server.url}/")
    await page.wait_for_function(f"window.sseLog.events.length >= {len(published)}")
    rows = [
        await row.locator("span").all_inner_texts()
        for row in await page.locator("#events li").all()
    ]
    assert [row[1] for row in reversed(rows)] == published  # newest on top
    assert {row[0] for row in rows} == {"orders:42"}
    headers = await page.locator(".columns span").all_inner_texts()
    assert headers == ["channel", "id", "event type", "data"]
    log = await page.evaluate("window.sseLog")
    assert log["resets"] == [] and log["errors"] == []

    resume = await page.locator("#resume code").inner_text()
    assert (
        resume == f"curl -N '{server.url}/channels/orders:42/events?last_event_id={published[-1]}'"
    )
    async with httpx.AsyncClient(timeout=10) as client:
        later = await client.post(f"{server.url}/channels/orders:42/events", json={"data": "later"})
        url = shlex.split(resume)[-1]
        session = await read_session(client, url, stop=lambda events: bool(events))
    assert [(e.type, e.last_event_id) for e in session.events] == [
        ("message", later.json()["ids"][0])
    ]
