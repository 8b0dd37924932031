"""JSON-line log records in Lambda's shape (the runtime loop's own logs are checked in
tests/test_stream.py, from a real runtime process)."""

from __future__ import annotations

import json
import logging
import sys

from handlers.logs import JsonLineFormatter, request_id


def _record(message: str, *args: object, exc_info: bool = False) -> logging.LogRecord:
    return logging.LogRecord(
        "gateway.session", logging.WARNING, __file__, 1, message, args,
        sys.exc_info() if exc_info else None,
    )  # fmt: skip


def test_formatter_writes_one_json_object_with_the_current_request_id() -> None:
    token = request_id.set("8f5b-request")
    try:
        line = JsonLineFormatter().format(_record("session on %r ends\nearly", "orders:42"))
    finally:
        request_id.reset(token)
    assert "\n" not in line
    document = json.loads(line)
    assert document["message"] == "session on 'orders:42' ends\nearly"
    assert (document["level"], document["logger"]) == ("WARNING", "gateway.session")
    assert document["requestId"] == "8f5b-request"
    assert document["timestamp"].endswith("+00:00")


def test_formatter_adds_the_error_and_leaves_out_a_missing_request_id() -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        document = json.loads(JsonLineFormatter().format(_record("failed", exc_info=True)))
    assert "requestId" not in document
    assert (document["errorType"], document["errorMessage"]) == ("ValueError", "bad value")
    assert document["stackTrace"][-1] == "ValueError: bad value\n"
