"""JSON-line logs for the runtime loop, each line of an invocation carrying its request id.

Lambda Managed Instances require custom runtimes to log JSON lines, and with
many invocations interleaved in one process a line is only useful if it says
which invocation wrote it. The request id lives in a context variable that each
worker sets for the invocation it serves: asyncio copies the context into every
task an invocation starts (Starlette's response tasks), so their lines carry it
too. The shape follows Lambda's own JSON log format (``timestamp``, ``level``,
``message``, ``logger``, ``requestId``; ``errorType``, ``errorMessage`` and
``stackTrace`` for an exception). It is a few lines on the standard library's
``Formatter``, so no logging dependency joins the package.
"""

from __future__ import annotations

import json
import logging
import traceback
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

request_id: ContextVar[str | None] = ContextVar("sse_gateway_request_id", default=None)


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
        }
        current = request_id.get()
        if current is not None:
            line["requestId"] = current
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            line["errorType"] = type(exc).__name__
            line["errorMessage"] = str(exc)
            line["stackTrace"] = traceback.format_exception(exc)
        return json.dumps(line, default=str)


def log_json_lines(stream: TextIO, level: int = logging.INFO) -> None:
    """Send every logger's records to ``stream`` as JSON lines."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLineFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
