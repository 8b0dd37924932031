"""A session's walk through one channel's log: what it delivers next, pure (no I/O).

A reader delivers each event of its channel once, in log order, and where the
next event does not follow its position (an expired stretch, a new epoch, a
log that started over) it first delivers a ``Reset`` saying where the stream
goes on (``gateway.cursor.step``), so a client never holds an id that claims
what it has not seen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway import wire
from gateway.composite import UNKNOWN_EPOCH
from gateway.cursor import Position, ResetReason, rewound_cursor, step
from gateway.items import StoredEvent

if TYPE_CHECKING:
    from gateway.feed import ChannelFeed


@dataclass(frozen=True, slots=True)
class Reset:
    """The client's position ``requested`` was lost; the stream goes on after
    ``continues_after``."""

    reason: ResetReason
    continues_after: Position
    requested: str | None


Delivery = StoredEvent | Reset


def encode_reset(reason: ResetReason, continues_after: Position, requested: str | None) -> bytes:
    """The in-band ``reset`` event: the client's position was lost, the stream goes on
    after ``continues_after``; its id moves the browser's last event id there."""
    data = {
        "reason": reason.value,
        "last_event_id": requested[:128] if requested is not None else None,
        "continues_after": continues_after.event_id,
    }
    return wire.encode_event(
        json.dumps(data, separators=(",", ":")), event="reset", id=continues_after.event_id
    )


def encode_delivery(delivery: Delivery) -> bytes:
    if isinstance(delivery, Reset):
        return encode_reset(delivery.reason, delivery.continues_after, delivery.requested)
    return wire.encode_event(delivery.data, event=delivery.event, id=delivery.event_id)


class Reader:
    """A session's walk through one channel's log: what it has delivered
    (``cursor``), how far it has read (``scanned_to``), and what comes next."""

    __slots__ = ("_visited", "aligned", "cursor", "rewound_from", "scanned_to")

    def __init__(
        self,
        cursor: Position,
        scanned_to: int,
        aligned: bool,
        rewound_from: Position | None = None,
    ) -> None:
        self.cursor = cursor
        self.scanned_to = scanned_to
        self.aligned = aligned  # scanned_to ends an item (see EventLog.read_after)
        # Until the first event: the head a rewind counted back from (cursor.rewound_cursor).
        self.rewound_from = rewound_from
        # Epochs met, rarely more than one: a tuple is a fifth of a set's size.
        self._visited: tuple[str, ...] = (cursor.epoch,) if cursor.epoch is not None else ()

    def deliveries(self, events: list[StoredEvent], feed: ChannelFeed | None) -> list[Delivery]:
        out: list[Delivery] = []
        for event in events:
            if self.rewound_from is not None:
                self.cursor = rewound_cursor(self.cursor, self.rewound_from, event.epoch, event.seq)
                self.rewound_from = None
            cursor = self.cursor
            if event.epoch != cursor.epoch or event.seq != cursor.seq + 1:
                observed = feed.observed_after(event.epoch) if feed is not None else None
                action = step(cursor, event.epoch, event.seq, event.since, self._visited, observed)
                if event.epoch not in self._visited:
                    self._visited += (event.epoch,)
                if action is not None:
                    out.append(Reset(action.reset, action.continues_after, _known(cursor)))
                    self.cursor = action.continues_after
                    if action.rewind:  # the log started over below: read it from there
                        self.scanned_to, self.aligned = self.cursor.seq, False
                        return out
            out.append(event)
            self.cursor = event.position
        return out


def _known(position: Position) -> str | None:
    """The id a client knows for ``position``: none for an epoch that a composite
    cursor named only by its fingerprint."""
    epoch = position.epoch
    return None if epoch is not None and epoch.startswith(UNKNOWN_EPOCH) else position.event_id
