"""Helpers for the tests of the browser client (``clients/js/sse-gateway.js``) in
Chromium: tokens minted as an app's server would, the client opened in a page,
and a record of the requests the browser really made."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from playwright.async_api import Page, Request

SECRET = "a-browser-client-test-secret-0123456789abcdef"


def mint(
    subscribe: Sequence[str] = (), publish: Sequence[str] = (), ttl: float = 300, key: str = SECRET
) -> str:
    """An HS256 token granting ``sse`` rights, expiring ``ttl`` seconds from now
    (``exp`` is whole seconds, so it lives between ``ttl - 1`` and ``ttl``)."""
    claims = {
        "sub": "browser-test",
        "exp": int(time.time() + ttl),
        "sse": {"subscribe": list(subscribe), "publish": list(publish)},
    }
    return jwt.encode(claims, key, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


class Tokens:
    """An app's token endpoint as the page's ``token()`` reaches it (through
    Playwright's ``expose_function``): mints a token per call and counts the calls.
    ``before(n)`` runs before the n-th token is handed out."""

    def __init__(
        self,
        subscribe: Sequence[str],
        ttl: float = 300,
        key: str = SECRET,
        before: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self.calls = 0
        self._subscribe = subscribe
        self._ttl = ttl
        self._key = key
        self._before = before

    async def __call__(self) -> str:
        self.calls += 1
        if self._before is not None:
            await self._before(self.calls)
        return mint(subscribe=self._subscribe, ttl=self._ttl, key=self._key)


# Imports the client from the gateway and records everything the stream reports in
# window.seen; with a token function, every token comes from the test (mintToken).
_OPEN = """async ({ options, withTokenFunction }) => {
  const { connect } = await import("/sse-gateway.js");
  if (withTokenFunction) options.token = () => window.mintToken();
  window.seen = { message: [], reset: [], state: [], error: [] };
  window.stream = connect(options);
  for (const type of Object.keys(window.seen)) {
    window.stream.addEventListener(type, (e) => window.seen[type].push(e.detail));
  }
}"""


async def open_stream(
    page: Page,
    gateway_url: str,
    token: Tokens | None = None,
    **options: Any,
) -> None:
    """Loads a page of the gateway's origin and connects the client there with
    ``options`` (``channels=[...]``, ``backoff={...}``)."""
    if token is not None:
        await page.expose_function("mintToken", token)
    await page.goto(f"{gateway_url}/healthz")
    await page.evaluate(_OPEN, {"options": options, "withTokenFunction": token is not None})


async def seen(page: Page) -> dict[str, list[Any]]:
    result: dict[str, list[Any]] = await page.evaluate("window.seen")
    return result


@dataclass(frozen=True)
class Sent:
    at: float
    kind: str  # Playwright's resource type: "eventsource" or "fetch"
    url: str


class RequestLog:
    """Every request to ``path`` the browser made, as its network layer saw it."""

    def __init__(self, page: Page, path: str = "/events?") -> None:
        self.sent: list[Sent] = []
        self._path = path
        page.on("request", self._record)

    def _record(self, request: Request) -> None:
        if self._path in request.url:
            self.sent.append(Sent(time.monotonic(), request.resource_type, request.url))

    def of(self, kind: str, since: float = 0.0) -> list[Sent]:
        return [s for s in self.sent if s.kind == kind and s.at >= since]
