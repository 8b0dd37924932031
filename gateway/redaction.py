"""Keep tokens out of logs: EventSource can only send a token in the query string,
and access logs print request targets."""

from __future__ import annotations

import logging
import re

from gateway.auth import TOKEN_QUERY_PARAMETER

_TOKEN_VALUE = re.compile(rf"(?<=[?&]{TOKEN_QUERY_PARAMETER}=)[^&#\s\"]*")


def redact_target(target: str) -> str:
    """``/path?token=abc&x=1`` → ``/path?token=[redacted]&x=1``."""
    return _TOKEN_VALUE.sub("[redacted]", target)


class RedactTokens(logging.Filter):
    """A filter for access loggers: rewrites any argument that carries a token."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_target(arg) if isinstance(arg, str) else arg for arg in record.args
            )
        record.msg = redact_target(str(record.msg))
        return True
