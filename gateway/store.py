"""The per-channel event log in DynamoDB: the I/O around ``gateway.items``.

An append is a conditional put of one item at ``seq = last + 1``: an item for
seq N+1 can only exist once the one ending at N does, so a strongly consistent
``Query(seq > cursor)`` never skips an append that becomes visible late.

A process writes to a channel one request at a time. That saves
conditional-check retries in production, and it means the embedded moto
server, whose conditional puts are not atomic under concurrent requests, is
never asked to arbitrate a race between writers of one process. The appends
that wait meanwhile go out together in the next write (group commit,
``gateway/commit.py``), so concurrent publishers share round trips rather than
queueing for one each. Across processes DynamoDB arbitrates: the loser learns
the slot's item (``ALL_OLD``) and moves past it, and a write that botocore
retried after a lost response recognises its own earlier success by its write id.

An append with an idempotency key is written in a transaction with its key
record: never events without their record, never a record without its
events. A repeat finds the record and answers the original ids.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.commit import Appended, Appender
from gateway.cursor import Position
from gateway.dynamodb import store_errors
from gateway.history import EMPTY_PAGE, HistoryPage, bounds, page
from gateway.items import (
    PARTITION_KEY,
    SORT_KEY,
    Batch,
    LogEnd,
    NewEvent,
    StoredEvent,
    decode_batch,
)
from gateway.metrics import Metrics, StoreStats
from gateway.query import LeanQuery
from gateway.settings import Settings

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient


@dataclass(frozen=True, slots=True)
class Page:
    """One query's worth of the log: ``scanned_to`` is the last seq of the last item
    examined, expired ones included, so a reader never scans them again; ``end``
    describes that item."""

    events: list[StoredEvent]
    scanned_to: int
    more: bool
    end: LogEnd | None = None


class EventLog:
    """The log of every channel in one table.

    ``write_window_seconds`` is the longest a write can take to land. A cached
    log end is trusted only while it is further than that from its expiry: TTL
    cannot have deleted it, nor anything after it, before this process's next
    write lands (``Settings`` keeps the retention longer than the window).
    """

    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        *,
        retention_seconds: int,
        write_window_seconds: float,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self._query_path = LeanQuery(client)  # every read: see gateway/query.py
        self._table = table_name
        self._clock = clock
        self.stats = StoreStats()
        self._metrics = metrics if metrics is not None else Metrics()
        self._appender = Appender(
            client,
            table_name,
            retention_seconds=retention_seconds,
            write_window_seconds=write_window_seconds,
            clock=clock,
            stats=self.stats,
            log_end=self._log_end,
            metrics=self._metrics,
        )

    @classmethod
    def for_settings(
        cls,
        client: DynamoDBClient,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> EventLog:
        return cls(
            client,
            settings.table_name,
            retention_seconds=settings.retention_seconds,
            write_window_seconds=settings.write_window_seconds,
            clock=clock,
            metrics=metrics,
        )

    async def last_batch(self, channel: str) -> Batch | None:
        """The channel's newest item, expired or not; None when it has none."""
        items, _ = await self._query(channel, newest_first=True, limit=1)
        return decode_batch(items[0]) if items else None

    async def read_after(
        self, channel: str, after_seq: int, limit: int = 100, *, aligned: bool = True
    ) -> Page:
        """Unexpired events with seq > ``after_seq``, oldest first.

        ``aligned`` says that ``after_seq`` ends an item (a position reached by
        reading whole items). A client's ``Last-Event-ID`` may point inside a
        batch; then the item holding ``after_seq + 1`` starts before it, and is
        looked up only when the first item found does not start right after it.
        """
        items, more = await self._query(channel, seq_condition=">", seq=after_seq, limit=limit)
        batches = [decode_batch(item) for item in items]
        if not aligned and after_seq > 0 and (not batches or batches[0].first != after_seq + 1):
            before, _ = await self._query(
                channel, seq_condition="<=", seq=after_seq, newest_first=True, limit=1
            )
            if before and (holding := decode_batch(before[0])).end.last > after_seq:
                batches.insert(0, holding)
        events = [event for batch in batches for event in self.live_events(batch, after_seq)]
        if not batches:
            return Page(events, after_seq, more)
        end = batches[-1].end
        return Page(events, end.last, more, end)

    async def history(self, channel: str, before: Position | None, limit: int) -> HistoryPage:
        """At most ``limit`` retained events right before ``before`` (or up to the head),
        oldest first, in one Query (see ``gateway.history``)."""
        query = bounds(before, limit)
        if query is None:
            return EMPTY_PAGE
        condition = "" if query.at_most is None else "<="
        items, more = await self._query(
            channel,
            seq_condition=condition,
            seq=query.at_most or 0,
            newest_first=True,
            limit=query.items,
        )
        batches = [decode_batch(item) for item in items]
        return page(batches, before, limit, more=more, now=self._clock())

    def live_events(self, batch: Batch, after_seq: int) -> list[StoredEvent]:
        """``batch``'s events after ``after_seq``; none once it has expired (TTL deletion
        lags by up to days, so readers filter expired items themselves)."""
        if self.has_expired(batch.expires_at):
            return []
        return [event for event in batch.events if event.seq > after_seq]

    def has_expired(self, expires_at: int) -> bool:
        return expires_at <= self._clock()

    async def append(
        self, channel: str, events: Sequence[NewEvent], *, idempotency_key: str | None = None
    ) -> Appended:
        """Append ``events`` as consecutive seqs in one item, all or nothing (in one
        write with the appends waiting on the channel, see ``gateway/commit.py``).

        With an ``idempotency_key``, a repeat of the same request on the channel
        (within the retention) writes nothing and answers the original ids; the
        same key with other events raises ``IdempotencyKeyReused``.
        """
        if not events:
            raise ValueError("append needs at least one event")
        return await self._appender.append(channel, events, idempotency_key)

    async def _log_end(self, channel: str) -> LogEnd | None:
        batch = await self.last_batch(channel)
        return batch.end if batch is not None else None

    async def _query(
        self,
        channel: str,
        *,
        seq_condition: str = "",
        seq: int = 0,
        newest_first: bool = False,
        limit: int,
    ) -> tuple[list[dict[str, Any]], bool]:
        """Items of the channel (``seq <seq_condition> seq`` when given) and whether
        more follow."""
        condition = "#c = :c"
        names: Any = {"#c": PARTITION_KEY}
        values: Any = {":c": {"S": channel}}
        if seq_condition:
            condition += f" AND #s {seq_condition} :s"
            names["#s"] = SORT_KEY
            values[":s"] = {"N": str(seq)}
        self.stats.queries += 1
        with store_errors(self._table, self._metrics, "query"):
            response = await self._query_path.query(
                {
                    "TableName": self._table,
                    "KeyConditionExpression": condition,
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": values,
                    "ConsistentRead": True,
                    "ScanIndexForward": not newest_first,
                    "Limit": limit,
                }
            )
        return list(response.get("Items", [])), "LastEvaluatedKey" in response
