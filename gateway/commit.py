"""Group commit: the appends waiting on a channel leave in one write.

A process writes to a channel one request at a time (``gateway/store.py`` says
why). Appends that arrive while a write is in flight wait in the channel's
queue, and the next write carries all of them, in arrival order, as ONE item:
still all or nothing, never half visible to a reader, one conditional put (or
one transaction with the key records of its keyed appends). Each append keeps
its own answer:

- its own ids, consecutive within the item in the order of its events;
- a keyed append whose key is taken is answered with the original ids (a
  replay) or ``IdempotencyKeyReused``; the cancelled transaction wrote
  nothing, so it leaves the group and the others are written without it;
- a write whose outcome is unknown (``StoreUnavailable``, or anything else
  that escapes) fails every member alike: each publishes again, with its key.

Deliberate choices:

- No waiting to gather: the first append on an idle channel is written at once,
  and groups form only behind a write in flight. A lone publisher pays nothing
  for this, and a group grows with the round trip it waited for.
- The writes run in a task of their own per channel (alive while appends wait),
  not in a caller's: a caller that gives up (its deadline) cannot cancel the
  write that carries the others. An append whose caller gave up before its
  write began is not written.
- A group is cut at the first append that does not fit, never reordered: at
  most ``MAX_BATCH_EVENTS`` events and ``MAX_ITEM_PAYLOAD_BYTES`` of event data
  (one item of at most 400 KB), at most 98 keyed appends (a transaction holds
  100 items: the batch, the check of the item it follows, and a record each),
  never two with one key (a transaction touches an item once; the second goes
  in the next write, finds the record and is answered as a replay).
- Every write after a log's first item is a transaction with the check that
  the item it follows is still there (``gateway/items.py`` says why): 4 write
  units for an item up to 1 KB (2 for the put, 2 for the check) where a plain
  put costs 1. Group commit shares them: one write per group, not per publish.
- A write cancelled by a concurrent transaction (``WriteConflict``: nothing was
  written) is tried again with jittered backoff, a few times, before its
  members are answered ``StoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.cursor import new_epoch
from gateway.errors import IdempotencyKeyReused, StoreUnavailable, WriteConflict
from gateway.items import (
    Batch,
    IdempotencyRecord,
    LogEnd,
    NewEvent,
    Placement,
    StoredEvent,
    batch_item,
    decode_batch,
    decode_idempotency_record,
    idempotency_record,
    place,
    request_digest,
    stored_events,
)
from gateway.metrics import Metrics, StoreStats
from gateway.settings import MAX_BATCH_EVENTS, MAX_ITEM_PAYLOAD_BYTES
from gateway.writes import put_batch, transact_batch

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

# After this many consecutive lost races, stop probing past the slot's item and
# re-read the end of the log: another process is far ahead of this one.
_PROBES_BEFORE_REQUERY = 4
_MAX_CONFLICTS = 64
# A write cancelled by a concurrent transaction is tried again this many times,
# after full-jitter exponential backoff from 20 ms, at most 0.5 s a wait (about
# 1.5 s in all at worst), before the publish is answered 503.
_CONFLICT_RETRIES = 6
_CONFLICT_BACKOFF_SECONDS = 0.02
_CONFLICT_BACKOFF_CAP_SECONDS = 0.5
_MAX_CHANNELS = 10_000
_MAX_KEYED = 98


@dataclass(frozen=True, slots=True)
class Appended:
    events: list[StoredEvent]
    replayed: bool = False  # an idempotent repeat: nothing was written


@dataclass(eq=False, slots=True)
class _Append:
    """One caller's append, waiting for its write."""

    events: Sequence[NewEvent]
    key: str | None
    future: asyncio.Future[Appended]
    digest: str = ""  # of the events, for a keyed append
    size: int = 0  # bytes of event data, as the validation counts them

    def __post_init__(self) -> None:
        if self.key is not None:
            self.digest = request_digest(self.events)
        self.size = sum(len(e.data.encode()) + len(e.event or "") for e in self.events)

    def answer(self, result: Appended | BaseException) -> None:
        if self.future.done():  # its caller gave up
            return
        if isinstance(result, BaseException):
            self.future.set_exception(result)
        else:
            self.future.set_result(result)


@dataclass(slots=True)
class _Channel:
    queue: deque[_Append] = field(default_factory=deque)
    writing: asyncio.Task[None] | None = None
    end: LogEnd | None = None  # the log's end as this process last wrote it


def _take_group(queue: deque[_Append]) -> list[_Append]:
    """The appends at the head of ``queue`` that fit in one write, in arrival order."""
    group: list[_Append] = []
    events = size = 0
    keys: set[str] = set()
    while queue:
        head = queue[0]
        if head.future.done():  # its caller gave up before it was written
            queue.popleft()
            continue
        if group and (
            events + len(head.events) > MAX_BATCH_EVENTS
            or size + head.size > MAX_ITEM_PAYLOAD_BYTES
            or (head.key is not None and (head.key in keys or len(keys) == _MAX_KEYED))
        ):
            break
        group.append(queue.popleft())
        events += len(head.events)
        size += head.size
        if head.key is not None:
            keys.add(head.key)
    return group


def _shares(events: tuple[StoredEvent, ...], group: list[_Append]) -> list[tuple[StoredEvent, ...]]:
    """Each member's slice of the group's events."""
    shares = []
    start = 0
    for member in group:
        shares.append(events[start : start + len(member.events)])
        start += len(member.events)
    return shares


def _replay(channel: str, member: _Append, record: IdempotencyRecord) -> Appended | Exception:
    if record.digest != member.digest:
        return IdempotencyKeyReused(
            f"Idempotency-Key {member.key!r} was used on channel {channel!r} for other "
            "events; use a new key for a new publish"
        )
    return Appended(record.events(member.events), replayed=True)


class Appender:
    """The appends of one process to every channel of one table."""

    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        *,
        retention_seconds: int,
        write_window_seconds: float,
        clock: Callable[[], float],
        stats: StoreStats,
        log_end: Callable[[str], Awaitable[LogEnd | None]],
        metrics: Metrics,
    ) -> None:
        self._client = client
        self._table = table_name
        self._retention = retention_seconds
        self._write_window = write_window_seconds
        self._clock = clock
        self._stats = stats
        self._log_end = log_end
        self._metrics = metrics
        self._channels: dict[str, _Channel] = {}

    async def append(
        self, channel: str, events: Sequence[NewEvent], idempotency_key: str | None
    ) -> Appended:
        waiting = _Append(events, idempotency_key, asyncio.get_running_loop().create_future())
        state = self._channel(channel)
        state.queue.append(waiting)
        if state.writing is None:
            state.writing = asyncio.create_task(self._drain(channel, state))
        return await waiting.future

    def _channel(self, channel: str) -> _Channel:
        state = self._channels.get(channel)
        if state is None:
            if len(self._channels) >= _MAX_CHANNELS:
                idle = [name for name, s in self._channels.items() if s.writing is None]
                for name in idle[: len(idle) // 2 + 1]:
                    del self._channels[name]
            state = self._channels[channel] = _Channel()
        return state

    async def _drain(self, channel: str, state: _Channel) -> None:
        """Write the channel's queue, a group at a time, until it is empty."""
        group: list[_Append] = []
        try:
            while group := _take_group(state.queue):
                try:
                    await self._write(channel, group, state)
                except Exception as exc:
                    state.end = None  # the outcome is unknown: read the end again next time
                    for member in group:
                        member.answer(exc)
        finally:
            state.writing = None
            if group or state.queue:  # cancelled (the loop is closing): nothing will write them
                state.end = None
                for member in [*group, *state.queue]:
                    member.future.cancel()
                state.queue.clear()

    async def _write(self, channel: str, group: list[_Append], state: _Channel) -> None:
        """Write ``group`` as one item at the log's end and answer each member."""
        end = state.end
        stale = end is None or not end.trusted(self._clock(), self._write_window)
        write_id = uuid.uuid4().hex
        conflicts = 0
        while group:
            if conflicts == _MAX_CONFLICTS:
                raise StoreUnavailable(
                    f"channel {channel!r} is under heavy concurrent publishing; retry the publish"
                )
            if stale:
                end, stale = await self._log_end(channel), False
            now = self._clock()
            placement = place(end, now=now, retention=self._retention, new_epoch=new_epoch)
            batch = Batch(
                stored_events(placement, [e for m in group for e in m.events], now),
                placement.expires_at,
                write_id,
            )
            shares = _shares(batch.events, group)
            item = batch_item(channel, batch)
            keyed = [
                (m, m.key, share)
                for m, share in zip(group, shares, strict=True)
                if m.key is not None
            ]
            records = [
                idempotency_record(channel, key, m.digest, Batch(share, batch.expires_at, write_id))
                for m, key, share in keyed
            ]
            taken, moved, records_held = await self._attempt(item, placement, records, now, group)
            replays = [
                (member, decode_idempotency_record(held))
                for (member, _, _), held in zip(keyed, records_held, strict=True)
                if held is not None
            ]
            if taken is None and not moved and not replays:
                state.end = batch.end
                for member, share in zip(group, shares, strict=True):
                    member.answer(Appended(list(share)))
                return
            for member, record in replays:
                member.answer(_replay(channel, member, record))
            group = [m for m in group if all(m is not member for member, _ in replays)]
            if taken is not None or moved:
                self._stats.conflicts += 1
                conflicts += 1
                if taken is not None:
                    end = decode_batch(taken).end
                # The item it was to follow moved (deleted, or replaced: a purge, a
                # new table), or another process is far ahead: read the end rather
                # than probe on.
                stale = moved or conflicts % _PROBES_BEFORE_REQUERY == 0

    async def _attempt(
        self,
        item: dict[str, Any],
        placement: Placement,
        records: list[dict[str, Any]],
        now: float,
        group: list[_Append],
    ) -> tuple[dict[str, Any] | None, bool, list[dict[str, Any] | None]]:
        """One write of ``item`` where ``placement`` put it (``gateway/writes.py``):
        a plain put only for a log's first item without key records. Repeated while
        it meets a concurrent transaction (``WriteConflict``, which wrote nothing and
        which botocore does not retry), with jittered backoff, until the budget is
        spent or no member still waits."""
        attempt = 0
        while True:
            self._stats.writes += 1
            try:
                if not records and placement.follows is None:
                    taken = await put_batch(self._client, self._table, self._metrics, item)
                    return taken, False, []
                return await transact_batch(
                    self._client, self._table, self._metrics, item, placement.follows, records, now
                )
            except WriteConflict:
                if attempt == _CONFLICT_RETRIES or all(m.future.done() for m in group):
                    raise
            backoff = min(_CONFLICT_BACKOFF_CAP_SECONDS, _CONFLICT_BACKOFF_SECONDS * 2**attempt)
            await asyncio.sleep(random.uniform(0, backoff))
            attempt += 1
