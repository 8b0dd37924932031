"""The per-channel event log in DynamoDB: the I/O around ``gateway.items``.

An append is a conditional put of one item at ``seq = last + 1``: an item for
seq N+1 can only exist once the one ending at N does, so a strongly consistent
``Query(seq > cursor)`` never skips an append that becomes visible late.

Appends to a channel are serialized inside a process. That saves
conditional-check retries in production, and it means the embedded moto
server, whose conditional puts are not atomic under concurrent requests, is
never asked to arbitrate a race between writers of one process. Across
processes DynamoDB arbitrates: the loser learns the slot's item (``ALL_OLD``)
and moves past it, and a write that botocore retried after a lost response
recognises its own earlier success by its write id.

An append with an idempotency key is a two-item transaction (the batch and its
key record): never events without their record, never a record without its
events. A repeat finds the record and answers the original ids.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from gateway.cursor import new_epoch
from gateway.errors import (
    GatewayError,
    IdempotencyKeyReused,
    StoreMisconfigured,
    StoreUnavailable,
)
from gateway.items import (
    PARTITION_KEY,
    SORT_KEY,
    TTL_ATTRIBUTE,
    Batch,
    IdempotencyRecord,
    LogEnd,
    NewEvent,
    StoredEvent,
    batch_item,
    decode_batch,
    decode_idempotency_record,
    idempotency_record,
    place,
    request_digest,
    stored_events,
)
from gateway.metrics import Metrics
from gateway.settings import Settings

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

# After this many consecutive lost races, stop probing past the slot's item and
# re-read the end of the log: another process is far ahead of this one.
_PROBES_BEFORE_REQUERY = 4
_MAX_CONFLICTS = 64
_MAX_WRITER_STATES = 10_000

_UNAVAILABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionInProgressException",
        "TransactionConflictException",
        "TransactionCanceledException",
    }
)
# Of those, the ones that say the table needs more capacity.
_THROTTLING_CODES = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}
)
_MISCONFIGURED_CODES = frozenset(
    {"ResourceNotFoundException", "AccessDeniedException", "UnrecognizedClientException"}
)


@dataclass(frozen=True, slots=True)
class Page:
    """One query's worth of the log: ``scanned_to`` is the last seq of the last item
    examined, expired ones included, so a reader never scans them again; ``end``
    describes that item."""

    events: list[StoredEvent]
    scanned_to: int
    more: bool
    end: LogEnd | None = None


@dataclass(frozen=True, slots=True)
class Appended:
    events: list[StoredEvent]
    replayed: bool = False  # an idempotent repeat: nothing was written


@dataclass(slots=True)
class StoreStats:
    """Request counters, for benchmarks and for tests of the shared tail loop."""

    queries: int = 0
    writes: int = 0
    conflicts: int = 0


@dataclass(slots=True)
class _WriterState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    end: LogEnd | None = None


@contextmanager
def _translated(table_name: str, metrics: Metrics, operation: str) -> Iterator[None]:
    """One DynamoDB call: counted, and its failure counted by kind and translated."""
    metrics.store_request(operation)
    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in _UNAVAILABLE_CODES:
            metrics.store_error("throttled" if code in _THROTTLING_CODES else "unavailable")
            raise StoreUnavailable(
                f"DynamoDB is throttling or unavailable ({code}) after retries; try again shortly"
            ) from exc
        if code in _MISCONFIGURED_CODES:
            metrics.store_error("misconfigured")
            raise StoreMisconfigured(
                f"DynamoDB table {table_name!r} is missing or not accessible ({code}); "
                "check SSE_GATEWAY_TABLE_NAME and the function's permissions"
            ) from exc
        metrics.store_error("rejected")
        raise GatewayError(f"DynamoDB rejected the request ({code}): {exc}") from exc
    except BotoCoreError as exc:
        metrics.store_error("unavailable")
        raise StoreUnavailable(f"DynamoDB could not be reached ({exc}); try again shortly") from exc


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
        self._client = client
        self._table = table_name
        self._retention = retention_seconds
        self._write_window = write_window_seconds
        self._clock = clock
        self._writers: dict[str, _WriterState] = {}
        self.stats = StoreStats()
        self._metrics = metrics if metrics is not None else Metrics()

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
        """Append ``events`` as consecutive seqs in one item, all or nothing.

        With an ``idempotency_key``, a repeat of the same request on the channel
        (within the retention) writes nothing and answers the original ids; the
        same key with other events raises ``IdempotencyKeyReused``.
        """
        if not events:
            raise ValueError("append needs at least one event")
        state = self._writer_state(channel)
        async with state.lock:
            try:
                return await self._append_locked(channel, events, idempotency_key, state)
            except BaseException:
                state.end = None  # the outcome may be unknown: read the end again next time
                raise

    def _writer_state(self, channel: str) -> _WriterState:
        state = self._writers.get(channel)
        if state is None:
            if len(self._writers) >= _MAX_WRITER_STATES:
                idle = [name for name, s in self._writers.items() if not s.lock.locked()]
                for name in idle[: len(idle) // 2 + 1]:
                    del self._writers[name]
            state = self._writers[channel] = _WriterState()
        return state

    async def _log_end(self, channel: str) -> LogEnd | None:
        batch = await self.last_batch(channel)
        return batch.end if batch is not None else None

    async def _append_locked(
        self,
        channel: str,
        events: Sequence[NewEvent],
        idempotency_key: str | None,
        state: _WriterState,
    ) -> Appended:
        end = state.end
        if end is None or not end.trusted(self._clock(), self._write_window):
            end = await self._log_end(channel)
        write_id = uuid.uuid4().hex
        digest = request_digest(events) if idempotency_key is not None else None
        for conflicts in range(_MAX_CONFLICTS):
            if conflicts and conflicts % _PROBES_BEFORE_REQUERY == 0:
                end = await self._log_end(channel)
            now = self._clock()
            placement = place(end, now=now, retention=self._retention, new_epoch=new_epoch)
            batch = Batch(stored_events(placement, events, now), placement.expires_at, write_id)
            item = batch_item(channel, batch)
            if idempotency_key is None or digest is None:
                taken = await self._put(item)
            else:
                record = idempotency_record(channel, idempotency_key, digest, batch)
                taken, replay = await self._put_with_record(item, record, now)
                if replay is not None:
                    if replay.digest != digest:
                        raise IdempotencyKeyReused(
                            f"Idempotency-Key {idempotency_key!r} was used on channel "
                            f"{channel!r} for other events; use a new key for a new publish"
                        )
                    return Appended(replay.events(events), replayed=True)
            if taken is None:
                state.end = batch.end
                return Appended(list(batch.events))
            self.stats.conflicts += 1
            end = decode_batch(taken).end
        raise StoreUnavailable(
            f"channel {channel!r} is under heavy concurrent publishing; retry the publish"
        )

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
        with _translated(self._table, self._metrics, "query"):
            response = await self._client.query(
                TableName=self._table,
                KeyConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ConsistentRead=True,
                ScanIndexForward=not newest_first,
                Limit=limit,
            )
        return list(response.get("Items", [])), "LastEvaluatedKey" in response

    async def _put(self, item: dict[str, Any]) -> dict[str, Any] | None:
        """Put ``item`` into a free slot; returns the item that holds the slot instead,
        or None when the slot holds ``item`` (written now, or by an earlier attempt
        whose response was lost)."""
        self.stats.writes += 1
        with _translated(self._table, self._metrics, "put"):
            try:
                await self._client.put_item(
                    TableName=self._table,
                    Item=item,
                    ConditionExpression="attribute_not_exists(#s)",
                    ExpressionAttributeNames={"#s": SORT_KEY},
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise
                response: dict[str, Any] = dict(exc.response)
                existing: dict[str, Any] | None = response.get("Item")
                if existing is None:
                    raise
                return None if existing["wid"] == item["wid"] else existing
        return None

    async def _put_with_record(
        self, item: dict[str, Any], record: dict[str, Any], now: float
    ) -> tuple[dict[str, Any] | None, IdempotencyRecord | None]:
        """The batch and its idempotency record in one transaction. Returns the item
        holding the slot if the slot was taken, and the existing record if the key
        was; (None, None) when both are ours."""
        self.stats.writes += 1
        slot: Any = {
            "TableName": self._table,
            "Item": item,
            "ConditionExpression": "attribute_not_exists(#s)",
            "ExpressionAttributeNames": {"#s": SORT_KEY},
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        # An expired record that TTL has not deleted yet no longer counts.
        key: Any = {
            "TableName": self._table,
            "Item": record,
            "ConditionExpression": "attribute_not_exists(#c) OR #e <= :now",
            "ExpressionAttributeNames": {"#c": PARTITION_KEY, "#e": TTL_ATTRIBUTE},
            "ExpressionAttributeValues": {":now": {"N": str(int(now))}},
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        with _translated(self._table, self._metrics, "transact_write"):
            try:
                await self._client.transact_write_items(TransactItems=[{"Put": slot}, {"Put": key}])
            except ClientError as exc:
                response: dict[str, Any] = dict(exc.response)
                if response.get("Error", {}).get("Code") != "TransactionCanceledException":
                    raise
                # One reason per item, in order: the slot's, then the key record's.
                reasons = [*response.get("CancellationReasons", []), {}, {}][:2]
                slot_item, key_item = (
                    reason.get("Item") if reason.get("Code") == "ConditionalCheckFailed" else None
                    for reason in reasons
                )
                if slot_item is None and key_item is None:
                    raise  # a conflict or throttling, not a condition: unavailable
                if any(x is not None and x["wid"] == item["wid"] for x in (slot_item, key_item)):
                    return None, None  # an earlier attempt of ours landed
                if key_item is not None:
                    return None, decode_idempotency_record(key_item)
                return slot_item, None
        return None, None
