"""The demo page in a real browser: Debian's headless Chromium, native EventSource,
a real ``sse-gateway dev`` process. What the page saw is read from ``window.sseLog``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageChops
from playwright.async_api import BrowserContext

from tests.eventstream import seq_of
from tests.servers import GatewayProcess

StartProcess = Callable[..., GatewayProcess]


async def _publish_paced(
    client: httpx.AsyncClient, url: str, publisher: int, count: int, pause: float
) -> dict[str, Any]:
    published: dict[str, Any] = {}
    for n in range(count):
        value = {"publisher": publisher, "n": n}
        response = await client.post(url, json={"data": value})
        assert response.status_code == 201, response.text
        (event_id,) = response.json()["ids"]
        published[event_id] = value
        await asyncio.sleep(pause)
    return published


async def test_demo_page_sees_every_event_once_in_order_across_reconnects(
    gateway_process: StartProcess, browser: BrowserContext
) -> None:
    server = gateway_process(max_session_seconds=2, retry_ms=200)
    page = await browser.new_page()
    await page.goto(f"{server.url}/?channel=browser-e2e")
    await page.wait_for_function("window.sseLog.opens >= 1")

    url = f"{server.url}/channels/browser-e2e/events"
    async with httpx.AsyncClient(timeout=10) as client:
        batches = await asyncio.gather(
            *(_publish_paced(client, url, publisher, 75, 0.2) for publisher in range(4))
        )
    published = {event_id: value for batch in batches for event_id, value in batch.items()}
    assert len(published) == 300

    await page.wait_for_function("window.sseLog.events.length >= 300", timeout=30_000, polling=100)
    await asyncio.sleep(2.5)  # one more session: a late duplicate would show up by now
    log = await page.evaluate("window.sseLog")

    expected = sorted(published, key=seq_of)
    assert [event["id"] for event in log["events"]] == expected
    assert all(event["type"] == "message" for event in log["events"])
    assert [json.loads(event["data"]) for event in log["events"]] == [
        published[event_id] for event_id in expected
    ]
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
    assert cells == [event_id, "greeting", '{"text":"hello from the form"}']
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
