"""Lambda function URL events (payload format 2.0) to ASGI and back: pure functions.

The request side follows what an ASGI server does with the request line:
``rawPath`` arrives percent-encoded (``encodeURIComponent("orders:42")`` sends
``orders%3A42``), so ``path`` is its decoded form and ``raw_path`` the bytes as
sent; ``rawQueryString`` passes through untouched and Starlette decodes it.
The response side is the HTTP integration prelude of a streamed response: a
JSON object with the status, headers and cookies, then eight NUL bytes, then
the body as it is produced.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

from gateway.request_bounds import DEADLINE_EXTENSION

PRELUDE_SEPARATOR = b"\0" * 8


class InvalidEvent(ValueError):
    """The invocation is not a function URL request this runtime can serve."""


def to_asgi(event: Any, *, deadline: float | None = None) -> tuple[dict[str, Any], bytes]:
    """The ASGI HTTP scope and request body for a function URL ``event``.

    ``deadline`` (on ``time.monotonic``) is passed to the app as a scope extension.
    """
    if not isinstance(event, Mapping):
        raise InvalidEvent("the event is not a JSON object")
    try:
        http = event["requestContext"]["http"]
        method = str(http["method"]).upper()
        raw_path = str(event["rawPath"])
    except (KeyError, TypeError) as exc:
        raise InvalidEvent(f"not a function URL event (payload format 2.0): missing {exc}") from exc
    headers: dict[str, str] = {
        str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()
    }
    cookies = event.get("cookies") or []
    if cookies:
        headers["cookie"] = "; ".join(str(c) for c in cookies)
    body = event.get("body") or ""
    if not isinstance(body, str):
        raise InvalidEvent("the body is not a string")
    try:
        raw_body = (
            base64.b64decode(body, validate=True) if event.get("isBase64Encoded") else body.encode()
        )
    except binascii.Error as exc:
        raise InvalidEvent("the body is marked base64 but is not") from exc
    scheme = headers.get("x-forwarded-proto", "https")
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": unquote(raw_path),
        "raw_path": raw_path.encode(),
        "query_string": str(event.get("rawQueryString") or "").encode(),
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "client": (str(http.get("sourceIp", "")), 0),
        "server": (headers.get("host", "lambda"), 443 if scheme == "https" else 80),
        "extensions": {DEADLINE_EXTENSION: deadline} if deadline is not None else {},
    }
    return scope, raw_body


def prelude(status: int, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The HTTP integration prelude: ``Set-Cookie`` headers travel as ``cookies``."""
    merged: dict[str, str] = {}
    cookies: list[str] = []
    for raw_name, raw_value in headers:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name == "set-cookie":
            cookies.append(value)
        else:
            merged[name] = f"{merged[name]}, {value}" if name in merged else value
    document = {"statusCode": status, "headers": merged, "cookies": cookies}
    return json.dumps(document).encode() + PRELUDE_SEPARATOR
