"""The event log's DynamoDB items and where the next append goes: pure functions.

One append (1..k events) is ONE item, keyed by the seq of its first event. A
single conditional put is all or nothing, so no reader can see part of a batch
(``Query`` has only read-committed isolation against ``TransactWriteItems``:
a reader could see seq N+2 of a transaction before N+1), and a batch costs one
write instead of a transaction's doubled units.

Placement keeps every id unique whatever TTL or a purge deletes, in whatever
order:

- an item's expiry is never earlier than its predecessor's (``max`` with it,
  so clock skew between writers cannot invert them): the expired items of a
  channel are always a prefix of its log;
- so while the newest item is unexpired, nothing after it can have been
  deleted, and the next append continues its epoch at its last seq + 1;
- once the newest item has expired, items after it may have been deleted
  unseen, so the next append opens a new epoch (above that item's seq, so no
  key of a surviving item is ever rewritten);
- every append after an item is written only if that item is still there,
  unchanged (``Placement.follows``, a condition of the write). A free slot
  after a live item is then one nobody ever took, since deletions take a
  prefix of the log (TTL, see above; a purge, oldest first; a replaced table,
  all of it). Without the condition, a writer whose cached end a purge had
  deleted would write at its old ``last + 1``: an id acknowledged for a second
  event, or an old epoch's item above a new epoch's first ones. And two writers
  could read the end on either side of a TTL deletion and both open epochs,
  one above the deleted item and one below it.
Every item also carries ``since``, the first seq of its epoch: a reader that
meets a new epoch can tell whether it began after its position or below it
(a purged channel starts over at 1).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.cursor import Position

PARTITION_KEY = "channel"
SORT_KEY = "seq"
TTL_ATTRIBUTE = "expires_at"
# Idempotency records live in partitions of their own, "<channel>#<key>": "#" is
# not in the channel grammar, so a record can never share a channel's partition.
IDEMPOTENCY_SEPARATOR = "#"


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append: ``data`` is the JSON text of the published value."""

    data: str
    event: str | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    epoch: str
    seq: int
    data: str
    event: str | None = None
    since: int = 1  # the first seq of this event's epoch
    appended_at: float = 0.0  # the writer's clock when the append was placed

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.seq)

    @property
    def event_id(self) -> str:
        return self.position.event_id


@dataclass(frozen=True, slots=True)
class LogEnd:
    """What an appender needs to know of a channel's newest item."""

    epoch: str
    since: int
    last: int
    expires_at: int
    key: int  # the item's sort key: the seq of its first event
    write_id: str

    def trusted(self, now: float, margin: float) -> bool:
        """Whether this item certainly still exists, so a cached copy may stand for it:
        TTL never deletes an item before it expires (``margin`` absorbs clock skew)."""
        return self.expires_at - now > margin


@dataclass(frozen=True, slots=True)
class Placement:
    epoch: str
    since: int
    first: int
    expires_at: int
    follows: LogEnd | None = None  # the item it goes after: it must still be there


def place(
    end: LogEnd | None,
    *,
    now: float,
    retention: int,
    new_epoch: Callable[[str | None, float, int], str],
) -> Placement:
    """Where an append after ``end`` goes (see the module docstring for why);
    ``new_epoch(above, now, retention)`` names an epoch opened now above an item
    of epoch ``above`` (None: a log that starts from nothing)."""
    expires_at = int(now) + retention
    if end is None:
        return Placement(new_epoch(None, now, retention), 1, 1, expires_at)
    expires_at = max(expires_at, end.expires_at)
    first = end.last + 1
    if end.expires_at <= now:
        opened = new_epoch(end.epoch, now, retention)
        return Placement(opened, first, first, expires_at, follows=end)
    return Placement(end.epoch, end.since, first, expires_at, follows=end)


@dataclass(frozen=True, slots=True)
class Batch:
    """One item of the log: the events of one append."""

    events: tuple[StoredEvent, ...]
    expires_at: int
    write_id: str

    @property
    def first(self) -> int:
        return self.events[0].seq

    @property
    def end(self) -> LogEnd:
        last = self.events[-1]
        return LogEnd(last.epoch, last.since, last.seq, self.expires_at, self.first, self.write_id)


def stored_events(
    placement: Placement, events: Sequence[NewEvent], now: float
) -> tuple[StoredEvent, ...]:
    appended_at = round(now, 3)  # as the item stores it
    return tuple(
        StoredEvent(
            placement.epoch,
            placement.first + index,
            event.data,
            event.event,
            placement.since,
            appended_at,
        )
        for index, event in enumerate(events)
    )


def batch_item(channel: str, batch: Batch) -> dict[str, Any]:
    head = batch.events[0]
    return {
        PARTITION_KEY: {"S": channel},
        SORT_KEY: {"N": str(head.seq)},
        "epoch": {"S": head.epoch},
        "since": {"N": str(head.since)},
        "appended_at": {"N": repr(head.appended_at)},
        "wid": {"S": batch.write_id},
        TTL_ATTRIBUTE: {"N": str(batch.expires_at)},
        "events": {
            "L": [
                {"M": {"data": {"S": e.data}, **({"event": {"S": e.event}} if e.event else {})}}
                for e in batch.events
            ]
        },
    }


def decode_batch(item: dict[str, Any]) -> Batch:
    epoch = item["epoch"]["S"]
    first = int(item[SORT_KEY]["N"])
    since = int(item["since"]["N"])
    appended_at = float(item["appended_at"]["N"])
    events = tuple(
        StoredEvent(
            epoch,
            first + index,
            entry["M"]["data"]["S"],
            entry["M"]["event"]["S"] if "event" in entry["M"] else None,
            since,
            appended_at,
        )
        for index, entry in enumerate(item["events"]["L"])
    )
    return Batch(events, int(item[TTL_ATTRIBUTE]["N"]), item["wid"]["S"])


def request_digest(events: Sequence[NewEvent]) -> str:
    """What an idempotency key stands for: the events of the request, exactly."""
    canonical = json.dumps([[e.event, e.data] for e in events], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def idempotency_key_item(channel: str, key: str) -> dict[str, Any]:
    return {
        PARTITION_KEY: {"S": f"{channel}{IDEMPOTENCY_SEPARATOR}{key}"},
        SORT_KEY: {"N": "0"},
    }


def idempotency_record(channel: str, key: str, digest: str, batch: Batch) -> dict[str, Any]:
    """The record of an idempotent append: written in one transaction with its batch,
    expiring with it, naming the ids it was answered with."""
    return {
        **idempotency_key_item(channel, key),
        "digest": {"S": digest},
        "epoch": {"S": batch.events[0].epoch},
        "first": {"N": str(batch.first)},
        "count": {"N": str(len(batch.events))},
        "wid": {"S": batch.write_id},
        TTL_ATTRIBUTE: {"N": str(batch.expires_at)},
    }


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    digest: str
    epoch: str
    first: int
    count: int
    write_id: str

    def events(self, events: Sequence[NewEvent]) -> list[StoredEvent]:
        """The events as first stored: a matching digest means the same events."""
        return [
            StoredEvent(self.epoch, self.first + i, e.data, e.event) for i, e in enumerate(events)
        ]


def decode_idempotency_record(item: dict[str, Any]) -> IdempotencyRecord:
    return IdempotencyRecord(
        item["digest"]["S"],
        item["epoch"]["S"],
        int(item["first"]["N"]),
        int(item["count"]["N"]),
        item["wid"]["S"],
    )
