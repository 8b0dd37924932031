"""Encoding of the WHATWG ``text/event-stream`` format.

Hand-written on purpose: it is a few lines, it sits on the hot path of every
delivered event, and it must refuse (not escape) any field that could end a
line, which general SSE helpers do not guarantee. A frame is the only unit a
publisher influences, so ``event`` and ``id`` are checked here, at the last
point before bytes leave the process.
"""

from __future__ import annotations

import re

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FORBIDDEN_IN_FIELD = re.compile(r"[\r\n\x00]")


class FieldError(ValueError):
    """A field value that would break the frame it is written into."""


def _checked(name: str, value: str) -> str:
    if _FORBIDDEN_IN_FIELD.search(value):
        raise FieldError(f"{name} must not contain CR, LF or NUL")
    return value


def encode_event(data: str, *, event: str | None = None, id: str | None = None) -> bytes:
    """One event frame; ``data`` may hold any line breaks, each becomes a ``data:`` line."""
    lines = []
    if event is not None:
        lines.append(f"event: {_checked('event', event)}\n")
    if id is not None:
        lines.append(f"id: {_checked('id', id)}\n")
    lines.extend(f"data: {line}\n" for line in _LINE_BREAK.split(data))
    lines.append("\n")
    return "".join(lines).encode()


def encode_id(id: str) -> bytes:
    """An id-only frame: the browser records the id without firing a message."""
    return f"id: {_checked('id', id)}\n\n".encode()


def encode_retry(milliseconds: int) -> bytes:
    if milliseconds < 0:
        raise FieldError("retry must be a non-negative number of milliseconds")
    return f"retry: {int(milliseconds)}\n\n".encode()


def encode_comment(text: str = "") -> bytes:
    """A comment line: ignored by clients, it keeps proxies and idle timers at bay."""
    return f": {_checked('comment', text)}\n\n".encode() if text else b":\n\n"
