"""Keep tokens out of logs: EventSource can only send a token in the query string,
and access logs print request targets.

What is redacted is what the app reads as the token: the value of every query
parameter whose name *decodes* to ``token`` (Starlette decodes names as
``parse_qsl`` does, so ``?to%6Ben=`` and ``?tok%65n=`` authenticate too), however
it is spelled. Both ``?`` and ``&`` start a parameter here, as a logged target's
path is decoded and may itself hold a ``?``: redacting a value that was no token
costs nothing, missing one leaks it.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

from gateway.auth import TOKEN_QUERY_PARAMETER

_PARAMETER = re.compile(r"(?<=[?&])([^=&?#\s\"]*)=([^&#\s\"]*)")
REDACTED = "[redacted]"


def _redact(match: re.Match[str]) -> str:
    name = match[1]
    if unquote_plus(name) != TOKEN_QUERY_PARAMETER:
        return match[0]
    return f"{name}={REDACTED}"


def redact_target(target: str) -> str:
    """``/path?token=abc&x=1`` → ``/path?token=[redacted]&x=1``, and so for
    ``?to%6Ben=abc``."""
    return _PARAMETER.sub(_redact, target)


class RedactTokens(logging.Filter):
    """A filter for access loggers: rewrites any argument that carries a token."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_target(arg) if isinstance(arg, str) else arg for arg in record.args
            )
        record.msg = redact_target(str(record.msg))
        return True
