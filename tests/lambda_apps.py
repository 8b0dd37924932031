"""ASGI apps for runtime-loop tests whose failure modes the gateway app never has."""

from __future__ import annotations

from typing import Any


async def fails_after_first_byte(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise RuntimeError("the app broke mid-stream")
