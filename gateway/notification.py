"""A notification's wire form: what one append tells other processes.

A notification can make a delivery sooner, never wrong, so its form only has to
be exact about what it claims: the stored events of one append, consecutive seqs
of one epoch, or nothing (a bare wake-up). Anything else is refused by
``decode``, and the receiver reads the log instead (``gateway/notify.py``).

- JSON, ``{"from": <process>, "events": [...]}``, each event's epoch, seq, since,
  data, event and appended_at, at most ``MAX_NOTIFICATION_BYTES``: above it only
  the newest events that fit, maybe none.
- The pub/sub channel of a gateway channel names the table too, so processes
  of two tables on one Redis never hear each other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gateway.items import StoredEvent

MAX_NOTIFICATION_BYTES = 64 * 1024


def pubsub_channel(table: str, channel: str) -> str:
    """The pub/sub channel of a gateway channel: neither a table name nor a channel
    name holds "/", so no two tables' channels meet."""
    return f"sse-gateway/{table}/{channel}"


def encode(origin: str, events: Sequence[StoredEvent]) -> bytes:
    """A notification of ``events``: the newest ones that fit in the bound."""
    parts = [
        json.dumps(
            {
                "epoch": e.epoch,
                "seq": e.seq,
                "since": e.since,
                "data": e.data,
                "event": e.event,
                "appended_at": e.appended_at,
            },
            separators=(",", ":"),
        )
        for e in events
    ]
    head = '{"from":' + json.dumps(origin) + ',"events":['
    size, kept = len(head) + 2, 0
    for part in reversed(parts):  # ASCII (json.dumps escapes the rest): chars are bytes
        if size + len(part) + 1 > MAX_NOTIFICATION_BYTES:
            break
        size += len(part) + 1
        kept += 1
    return (head + ",".join(parts[len(parts) - kept :]) + "]}").encode()


def decode(payload: bytes | str) -> tuple[str, list[StoredEvent]]:
    """The sender and events of a notification; raises ``ValueError`` unless they are
    consecutive seqs of one epoch, as one append's are."""
    try:
        message = json.loads(payload)
        origin = message["from"]
        events = [
            StoredEvent(
                epoch=_typed(e["epoch"], str),
                seq=_typed(e["seq"], int),
                data=_typed(e["data"], str),
                event=None if e["event"] is None else _typed(e["event"], str),
                since=_typed(e["since"], int),
                appended_at=float(_typed(e["appended_at"], (int, float))),
            )
            for e in message["events"]
        ]
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a notification: {exc}") from exc
    if not isinstance(origin, str) or any(
        e.epoch != events[0].epoch or e.seq != events[0].seq + i for i, e in enumerate(events)
    ):
        raise ValueError("a notification's events are consecutive seqs of one epoch")
    return origin, events


def _typed(value: Any, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{value!r} is no {kind}")
    return value
