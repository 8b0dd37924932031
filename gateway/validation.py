"""What a publish or subscribe request may contain: pure checks, no I/O.

Names use a small ASCII grammar so that a channel or event name can never
carry a line break into a frame or a header, and the reserved event types
stay out of publishers' hands: ``reset`` is the gateway's own (a publisher must
not be able to forge the signal that tells clients their position was lost),
and ``open`` and ``error`` are the events EventSource dispatches itself (a
frame of either type would fire every subscriber's ``onopen`` or ``onerror``
while its stream is fine). ``message`` stays allowed: it is what a frame
without a type is already.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from gateway.errors import InvalidInput, PayloadTooLarge
from gateway.items import NewEvent
from gateway.settings import MAX_ITEM_PAYLOAD_BYTES

CHANNEL_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
EVENT_NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
RESERVED_EVENT_NAMES = frozenset({"reset", "open", "error"})

_CHANNEL = re.compile(CHANNEL_PATTERN)
# Printable ASCII, as HTTP header values carry it.
_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,128}")


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    event: str | None = Field(None, pattern=EVENT_NAME_PATTERN)
    data: JsonValue


def check_channel(name: str) -> str:
    if not _CHANNEL.fullmatch(name):
        raise InvalidInput(
            f"channel name {name[:140]!r} is invalid: use 1-128 characters of A-Z a-z 0-9 _ - . :",
            code="invalid_channel",
        )
    return name


def check_channels(names: Sequence[str], limit: int) -> list[str]:
    """The channels of a multi-channel subscription, each once, in the order given."""
    channels = list(dict.fromkeys(check_channel(name) for name in names))
    if not channels:
        raise InvalidInput(
            "name at least one channel: /events?channel=<name>&channel=<name>...",
            code="missing_channel",
        )
    if len(channels) > limit:
        raise InvalidInput(
            f"{len(channels)} channels named; one connection takes at most {limit}",
            code="too_many_channels",
        )
    return channels


def check_idempotency_key(key: str) -> str:
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidInput(
            "Idempotency-Key must be 1-128 printable ASCII characters "
            f"(got {len(key)} characters{'' if key.isascii() else ', not all ASCII'})",
            code="invalid_idempotency_key",
        )
    return key


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large for a double")
    return value


def parse_json_body(raw: bytes) -> Any:
    """Strict JSON: UTF-8 only, no NaN or Infinity (nor numbers that overflow to
    them), nesting bounded by the parser."""
    try:
        return json.loads(
            raw.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float
        )
    except UnicodeDecodeError as exc:
        raise InvalidInput("request body is not valid UTF-8", code="invalid_json") from exc
    except RecursionError as exc:
        raise InvalidInput("request body is nested too deeply", code="invalid_json") from exc
    except ValueError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}", code="invalid_json") from exc


def events_from_body(body: Any, *, max_event_bytes: int, max_batch_events: int) -> list[NewEvent]:
    """``{"event": ..., "data": ...}`` or ``{"events": [...]}`` into events to append."""
    if not isinstance(body, Mapping):
        raise InvalidInput("request body must be a JSON object", code="invalid_body")
    if "events" in body:
        if set(body) != {"events"}:
            raise InvalidInput('a batch body has only the key "events"', code="invalid_body")
        items = body["events"]
        if not isinstance(items, list) or not items:
            raise InvalidInput('"events" must be a non-empty array', code="invalid_body")
        return new_events(items, max_event_bytes=max_event_bytes, max_batch_events=max_batch_events)
    return new_events([body], max_event_bytes=max_event_bytes, max_batch_events=max_batch_events)


def new_events(
    items: Sequence[Any], *, max_event_bytes: int, max_batch_events: int
) -> list[NewEvent]:
    """Validate every item before any is written: a rejected batch writes nothing."""
    if len(items) > max_batch_events:
        raise InvalidInput(
            f"a batch holds at most {max_batch_events} events, got {len(items)}",
            code="batch_too_large",
        )
    events = []
    batch_bytes = 0
    for index, item in enumerate(items):
        where = f"events[{index}]" if len(items) > 1 else "event"
        try:
            parsed = EventIn.model_validate(item)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "body"
            raise InvalidInput(f"{where}.{field}: {first['msg']}", code="invalid_event") from exc
        if parsed.event in RESERVED_EVENT_NAMES:
            raise InvalidInput(
                f"{where}.event: {parsed.event!r} is reserved (reserved: "
                f"{', '.join(sorted(RESERVED_EVENT_NAMES))})",
                code="invalid_event",
            )
        try:
            data = json.dumps(
                parsed.data, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            )
        except ValueError as exc:
            raise InvalidInput(
                f"{where}.data holds NaN or Infinity, which JSON cannot carry", code="invalid_event"
            ) from exc
        try:
            size = len(data.encode())
        except UnicodeEncodeError as exc:
            raise InvalidInput(
                f"{where}.data holds a lone UTF-16 surrogate ({data[exc.start]!r}), which is "
                "not Unicode text: send valid UTF-8 (escape pairs like \\ud83d\\ude00 together)",
                code="invalid_event",
            ) from exc
        if size > max_event_bytes:
            raise PayloadTooLarge(
                f"{where}.data is {size} bytes as JSON; the limit is {max_event_bytes}"
            )
        batch_bytes += size + len(parsed.event or "")
        if batch_bytes > MAX_ITEM_PAYLOAD_BYTES:
            raise PayloadTooLarge(
                f"the events add up to more than {MAX_ITEM_PAYLOAD_BYTES} bytes: one publish is "
                "stored as one DynamoDB item (400 KB at most); split it into several publishes"
            )
        events.append(NewEvent(data=data, event=parsed.event))
    return events
