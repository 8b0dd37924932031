"""ASGI apps for runtime-loop tests whose failure modes the gateway app never has."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

logger = logging.getLogger("tests.lambda_apps")


async def fails_after_first_byte(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise RuntimeError("the app broke mid-stream")


async def never_finishes(scope: Any, receive: Any, send: Any) -> None:
    """Ignores the disconnect too: only cancelling its task stops it."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"forever", "more_body": True})
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        logger.info("cancelled")
        raise


async def logs_around_a_pause(scope: Any, receive: Any, send: Any) -> None:
    """Logs before and after a pause, so concurrent invocations interleave their lines."""
    logger.info("begin %s", scope["path"])
    await asyncio.sleep(0.3)
    logger.info("end %s", scope["path"])
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})
