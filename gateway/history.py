"""A page of a channel's history, and the request parameters that ask for one: pure
functions, no I/O.

A page holds at most ``limit`` retained events, oldest first, that come right
before ``before`` in the log (or end at its head), so paging back with each
answer's ``next_before`` returns every retained event once, in log order, and
the newest id of the first page is a position a subscription resumes after
without a gap. Three facts of the log (``gateway.items``) make one ``Query``
a page:

- an item holds the consecutive events of one append under the seq of its
  first, so the item holding ``before`` is the newest whose key is at most
  ``before``'s seq, and ``limit`` older items hold at least ``limit`` events;
- expiries never decrease along the log, so the first expired item met walking
  back ends the retained log: nothing older is returned;
- ``before`` names a position of ours only while the item holding it is
  retained with the same epoch; otherwise (an older epoch, a purged channel,
  expired, or beyond the head) there is nothing to page back from, and the
  answer is an empty page, not an error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.cursor import Position, parse_event_id
from gateway.errors import InvalidInput
from gateway.items import Batch, StoredEvent

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_REWIND = 1000


def _count(name: str, text: str, low: int, high: int) -> int:
    value = int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else None
    if value is None or not low <= value <= high:
        raise InvalidInput(
            f"{name} must be a whole number from {low} to {high}, not {text[:40]!r}",
            code=f"invalid_{name}",
        )
    return value


def check_limit(limit: int) -> int:
    """A page's limit from Python code: the HTTP parameter's rule."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidInput(
            f"limit must be an int, not {type(limit).__name__}", code="invalid_limit"
        )
    return _count("limit", str(limit), 1, MAX_LIMIT)


def parse_limit(text: str | None) -> int:
    """How many events a page holds at most (``?limit=``, 1-1000, default 100)."""
    return DEFAULT_LIMIT if text is None else _count("limit", text, 1, MAX_LIMIT)


def parse_rewind(text: str | None) -> int:
    """How many events before the head a fresh subscription starts (``?rewind=``,
    0-1000; 0, like none, starts at the head)."""
    return 0 if text is None else _count("rewind", text, 0, MAX_REWIND)


def parse_before(text: str | None) -> Position | None:
    """The position a page ends before (``?before=``), None for the head."""
    if text is None:
        return None
    position = parse_event_id(text)
    if position is None:
        raise InvalidInput(
            f"before must be an event id of this gateway (<epoch>-<seq>), not {text[:40]!r}",
            code="invalid_before",
        )
    return position


@dataclass(frozen=True, slots=True)
class Bounds:
    """The one Query of a page: items with key at most ``at_most`` (None: from the
    head), newest first, ``items`` of them."""

    at_most: int | None
    items: int


def bounds(before: Position | None, limit: int) -> Bounds | None:
    """The Query of a page, or None when nothing can come before ``before`` (the id
    ``0``, before the first event). The item holding ``before`` comes first, and
    one item more than ``limit`` tells whether older events remain."""
    if before is None:
        return Bounds(None, limit + 1)
    if before.epoch is None:
        return None
    return Bounds(before.seq, limit + 2)


@dataclass(frozen=True, slots=True)
class HistoryPage:
    events: list[StoredEvent]  # oldest first
    next_before: Position | None  # None once the retained log's start is reached

    def body(self) -> str:
        """The HTTP answer: the events as the stream carries them (``data`` is the
        published JSON, as stored)."""
        events = ",".join(
            f'{{"id":"{e.event_id}","event":{json.dumps(e.event)},"data":{e.data}}}'
            for e in self.events
        )
        after = json.dumps(self.next_before.event_id if self.next_before else None)
        return f'{{"events":[{events}],"next_before":{after}}}'

    def as_dict(self) -> dict[str, Any]:
        """The same as the HTTP answer, ``data`` parsed: for a Python page's own rendering."""
        result: dict[str, Any] = json.loads(self.body())
        return result


EMPTY_PAGE = HistoryPage([], None)


def page(
    batches: Sequence[Batch], before: Position | None, limit: int, *, more: bool, now: float
) -> HistoryPage:
    """The page that ``batches`` (the Query's items, newest first; ``more`` when it
    stopped short of the channel's first item) hold before ``before``."""
    if before is not None:
        holding = batches[0] if batches else None
        if (
            holding is None
            or holding.expires_at <= now
            or holding.events[0].epoch != before.epoch
            or holding.end.last < before.seq
        ):
            return EMPTY_PAGE
    bound = before.seq if before is not None else None
    taken: list[StoredEvent] = []  # newest first
    for batch in batches:
        if batch.expires_at <= now:  # so has every older item: the retained log ends
            return HistoryPage(taken[::-1], None)
        for event in reversed(batch.events):
            if bound is not None and event.seq >= bound:
                continue
            if len(taken) == limit:  # a retained event older than the page
                return HistoryPage(taken[::-1], taken[-1].position)
            taken.append(event)
    next_before = taken[-1].position if more and taken else None
    return HistoryPage(taken[::-1], next_before)
