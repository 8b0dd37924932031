"""What bounds one request: its body, read with a cap on size and time, and the
deadline its host (a Lambda handler) passes.

A body is never read whole before its size is known to be within the limit,
nor waited for without end: a body trickled a byte at a time would hold a
connection and a task.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from gateway.errors import PayloadTooLarge, RequestTimeout

# The key under ``scope["extensions"]`` where a host passes a hard deadline for
# a request (a session ends by it, a publish answers by it), as a
# ``time.monotonic()`` value.
DEADLINE_EXTENSION = "sse_gateway.deadline"


async def read_capped_body(request: Request, limit: int, within: float) -> bytes:
    """The request body, refusing to read more than ``limit`` bytes or to wait for it
    longer than ``within`` seconds (a body trickled a byte at a time holds a
    connection and a task)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    try:
        async with asyncio.timeout(within):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    except TimeoutError as exc:
        raise RequestTimeout(f"the request body did not arrive within {within:g} s") from exc
    return bytes(body)


def host_deadline(request: Request) -> float | None:
    """The deadline a host (the Lambda handlers) passed for this request, if any."""
    deadline = request.scope.get("extensions", {}).get(DEADLINE_EXTENSION)
    return float(deadline) if deadline is not None else None
