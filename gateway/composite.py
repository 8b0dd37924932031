"""The composite cursor of a multi-channel session: pure functions, no I/O.

One ``id:`` must carry every channel's position in at most 128 bytes for 16
channels, using only ``[0-9A-Za-z._~-]``, so that ``Last-Event-ID`` stays a
CORS-safelisted header. That leaves 8 characters (48 bits) a channel, too few
for a channel name or a whole epoch, so each entry holds:

- a 12-bit *tag* of the channel name (2 characters): a request's channels pick
  their entries by tag; where tags collide the entries are in channel-name order;
- a 12-bit *fingerprint* of the epoch (2 characters), or ``.`` for "before the
  first event" (the single-channel id ``0``);
- the seq, 5 bits a character, the last one from a second alphabet so the entry
  ends itself: 4 characters up to seq 2**20.

16 channels with seqs below 2**20 take at most 128 bytes; larger seqs make a
longer id (a cross-origin reconnect then needs a CORS preflight, which the
gateway answers; nothing else changes).

What the short fields cost, and why it is safe: a fingerprint that differs from
the head's epoch proves another epoch, and one that matches while the seq lies
below where the head's epoch began proves a collision; both are then read as an
old epoch, exactly as a full id of another epoch is. An epoch that opens above
an older one's item (its newer items expired) is fingerprinted by the
half-retention it opens in (``cursor.new_epoch`` says why that is safe), so no
two such epochs of a channel opened within 2048 retentions share one, however
far a cursor's seq lies past where the newer one began, and even where TTL
deleted an epoch whole and the next opened below where it began. What a
fingerprint cannot tell apart is an epoch of a log that started over from
nothing (a purge, a replaced table: a random fingerprint) from one before it:
a 1 in 4096 chance per epoch opened since, only for a subscriber away through
such a restart.

A tag collision between a channel of the cursor and an unrelated channel of a
new request can at worst give that channel an old position of another epoch (a
``reset`` or some history), never a silent gap.
When a request names fewer of the colliding channels than the cursor holds, the
entries cannot be told apart, and those channels start at their head with a
``reset``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gateway.cursor import EMPTY, Position, ResetReason, Start, fingerprint, resolve_position

_BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_MORE = "0123456789ABCDEFGHIJKLMNOPQRSTUV"  # a seq digit with more to come
_LAST = "WXYZabcdefghijklmnopqrstuvwxyz-_"  # the seq's last digit
_EMPTY_MARK = "."
UNKNOWN_EPOCH = "~"
# 64 channels (the most one connection names) of 17 characters at most (a seq
# below 2**60), with room: anything longer is not ours, and is refused before
# it is decoded, which is linear pure Python on the event loop.
MAX_CURSOR_CHARS = 2048
_ENTRY = re.compile(
    rf"([{re.escape(_BASE64)}]{{2}})(?:{re.escape(_EMPTY_MARK)}|([{re.escape(_BASE64)}]{{2}})"
    rf"([{_MORE}]{{0,12}})([{re.escape(_LAST)}]))"
)


def _two(value: int) -> str:
    return _BASE64[value >> 6 & 63] + _BASE64[value & 63]


def _from_two(text: str) -> int:
    return _BASE64.index(text[0]) << 6 | _BASE64.index(text[1])


def channel_tag(channel: str) -> str:
    return _two(int.from_bytes(hashlib.sha256(channel.encode()).digest()[:2], "big") >> 4)


def epoch_fingerprint(epoch: str) -> int:
    # An epoch known only by its fingerprint (see ``Requested.start``) keeps it.
    return fingerprint(epoch.removeprefix(UNKNOWN_EPOCH))


def _seq(seq: int) -> str:
    digits = [_LAST[seq & 31]]
    seq >>= 5
    while seq:
        digits.append(_MORE[seq & 31])
        seq >>= 5
    return "".join(reversed(digits))


def encode(positions: Mapping[str, Position]) -> str:
    """The cursor for ``positions`` by channel."""
    return Encoder(positions)(positions)


class Encoder:
    """Cursors of one session's channels: their tags and order worked out once,
    as every frame of the session carries a cursor."""

    def __init__(self, channels: Iterable[str]) -> None:
        self._tags = [(channel, channel_tag(channel)) for channel in sorted(channels)]

    def __call__(self, positions: Mapping[str, Position]) -> str:
        parts = []
        for channel, tag in self._tags:
            position = positions[channel]
            parts.append(tag)
            if position.epoch is None:
                parts.append(_EMPTY_MARK)
            else:
                parts.append(_two(epoch_fingerprint(position.epoch)) + _seq(position.seq))
        return "".join(parts)


@dataclass(frozen=True, slots=True)
class Entry:
    """A channel's position as a cursor holds it: ``fingerprint`` is None before the
    first event."""

    fingerprint: int | None
    seq: int


@dataclass(frozen=True, slots=True)
class Requested:
    """What a cursor says of one requested channel: a position, none (start at the
    head), or one it cannot tell apart from another (start at the head, with a reset)."""

    entry: Entry | None = None
    ambiguous: bool = False

    def start(self, head: Position, since: int) -> Start:
        if self.ambiguous:
            return Start(head, reset=ResetReason.INVALID_ID)
        if self.entry is None:
            return Start(head, fresh=True)
        if self.entry.fingerprint is None:
            return resolve_position(EMPTY, head, since)
        same_epoch = (
            head.epoch is not None
            and epoch_fingerprint(head.epoch) == self.entry.fingerprint
            and self.entry.seq >= since - 1
        )
        # Another epoch's position: a name no real epoch has, so it never equals one.
        epoch = head.epoch if same_epoch else f"{UNKNOWN_EPOCH}{self.entry.fingerprint:03x}"
        return resolve_position(Position(epoch, self.entry.seq), head, since)


def decode(cursor: str | None, channels: Sequence[str]) -> dict[str, Requested] | None:
    """Each requested channel's position in ``cursor``; None when the cursor is not
    one of ours (every channel then starts at its head with a reset)."""
    if cursor is not None and len(cursor) > MAX_CURSOR_CHARS:
        return None
    by_tag: dict[str, list[Entry]] = {}
    if cursor is not None:
        at = 0
        while at < len(cursor):
            match = _ENTRY.match(cursor, at)
            if match is None:
                return None
            tag, fingerprint, more, last = match.groups()
            if fingerprint is None:
                entry = Entry(None, 0)
            else:
                seq = 0
                for digit in more:
                    seq = seq << 5 | _MORE.index(digit)
                entry = Entry(_from_two(fingerprint), seq << 5 | _LAST.index(last))
            by_tag.setdefault(tag, []).append(entry)
            at = match.end()
    requested: dict[str, Requested] = {}
    sharing: dict[str, list[str]] = {}
    for channel in sorted(set(channels)):
        sharing.setdefault(channel_tag(channel), []).append(channel)
    for tag, named in sharing.items():
        entries = by_tag.get(tag, [])
        if not entries:
            requested.update((channel, Requested()) for channel in named)
        elif len(entries) == len(named):
            requested.update((c, Requested(e)) for c, e in zip(named, entries, strict=True))
        else:
            requested.update((channel, Requested(ambiguous=True)) for channel in named)
    return requested
