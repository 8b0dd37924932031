"""The per-channel event log in DynamoDB.

Appends are conditional puts of ``seq = head + 1``: seq N+1 can only exist once
N does, so a strongly consistent ``Query(seq > cursor)`` never skips an event
that becomes visible late (a counter item or time-based ids would allow that).

Appends to a channel are serialized inside a process. That saves
conditional-check retries in production, and it means the embedded moto
server, whose conditional puts are not atomic under concurrent requests, is
never asked to arbitrate a race between writers of one process. Across
processes DynamoDB arbitrates: the loser probes the next seq, and an
``ALL_OLD`` item on a failed condition tells a write that botocore retried
after a lost response that the slot already holds its own event.
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

from gateway.cursor import EMPTY, Position, new_epoch
from gateway.errors import GatewayError, StoreMisconfigured, StoreUnavailable

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

PARTITION_KEY = "channel"
SORT_KEY = "seq"
TTL_ATTRIBUTE = "expires_at"

# After this many consecutive lost races, stop probing one seq at a time and
# re-read the head: another process is far ahead of this one's cached head.
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
_MISCONFIGURED_CODES = frozenset(
    {"ResourceNotFoundException", "AccessDeniedException", "UnrecognizedClientException"}
)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append: ``data`` is the JSON text of the published value."""

    data: str
    event: str | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    epoch: str
    data: str
    event: str | None = None

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.seq)

    @property
    def event_id(self) -> str:
        return self.position.event_id


@dataclass(frozen=True, slots=True)
class Page:
    """One query's worth of the log: ``scanned_to`` counts expired items too, so a
    reader past a run of expired items never scans them again."""

    events: list[StoredEvent]
    scanned_to: int
    more: bool


@dataclass(slots=True)
class StoreStats:
    """Request counters, for benchmarks and for tests of the shared tail loop."""

    queries: int = 0
    writes: int = 0
    conflicts: int = 0


@dataclass(slots=True)
class _WriterState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    head: Position | None = None


class _SlotTaken(Exception):
    def __init__(self, item: dict[str, Any], own: bool) -> None:
        self.item = item
        self.own = own


@contextmanager
def _translated(table_name: str) -> Iterator[None]:
    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in _UNAVAILABLE_CODES:
            raise StoreUnavailable(
                f"DynamoDB is throttling or unavailable ({code}) after retries; try again shortly"
            ) from exc
        if code in _MISCONFIGURED_CODES:
            raise StoreMisconfigured(
                f"DynamoDB table {table_name!r} is missing or not accessible ({code}); "
                "check SSE_GATEWAY_TABLE_NAME and the function's permissions"
            ) from exc
        raise GatewayError(f"DynamoDB rejected the request ({code}): {exc}") from exc
    except BotoCoreError as exc:
        raise StoreUnavailable(f"DynamoDB could not be reached ({exc}); try again shortly") from exc


def _decode(item: dict[str, Any]) -> StoredEvent:
    event = item.get("event")
    return StoredEvent(
        seq=int(item[SORT_KEY]["N"]),
        epoch=item["epoch"]["S"],
        data=item["data"]["S"],
        event=event["S"] if event else None,
    )


class EventLog:
    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        *,
        retention_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._table = table_name
        self._retention = retention_seconds
        self._clock = clock
        self._writers: dict[str, _WriterState] = {}
        self.stats = StoreStats()

    async def head(self, channel: str) -> Position:
        """The last written position, counting events that have expired but still exist."""
        self.stats.queries += 1
        with _translated(self._table):
            response = await self._client.query(
                TableName=self._table,
                KeyConditionExpression="#c = :c",
                ExpressionAttributeNames={"#c": PARTITION_KEY, "#s": SORT_KEY, "#e": "epoch"},
                ExpressionAttributeValues={":c": {"S": channel}},
                ProjectionExpression="#s, #e",
                ConsistentRead=True,
                ScanIndexForward=False,
                Limit=1,
            )
        items = response.get("Items", [])
        if not items:
            return EMPTY
        return Position(items[0]["epoch"]["S"], int(items[0][SORT_KEY]["N"]))

    async def read_after(self, channel: str, after_seq: int, limit: int = 100) -> Page:
        """Unexpired events with seq > ``after_seq``, oldest first."""
        self.stats.queries += 1
        with _translated(self._table):
            response = await self._client.query(
                TableName=self._table,
                KeyConditionExpression="#c = :c AND #s > :s",
                ExpressionAttributeNames={"#c": PARTITION_KEY, "#s": SORT_KEY},
                ExpressionAttributeValues={":c": {"S": channel}, ":s": {"N": str(after_seq)}},
                ConsistentRead=True,
                Limit=limit,
            )
        items = response.get("Items", [])
        now = self._clock()
        # TTL deletion lags by up to days: expired items must be filtered here.
        events = [_decode(item) for item in items if float(item[TTL_ATTRIBUTE]["N"]) > now]
        scanned_to = int(items[-1][SORT_KEY]["N"]) if items else after_seq
        return Page(events, scanned_to, "LastEvaluatedKey" in response)

    async def append(self, channel: str, events: Sequence[NewEvent]) -> list[StoredEvent]:
        """Append ``events`` as consecutive seqs, all or nothing."""
        if not events:
            raise ValueError("append needs at least one event")
        state = self._writer_state(channel)
        async with state.lock:
            try:
                return await self._append_locked(channel, events, state)
            except BaseException:
                state.head = None  # the outcome may be unknown: read the head again next time
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

    async def _append_locked(
        self, channel: str, events: Sequence[NewEvent], state: _WriterState
    ) -> list[StoredEvent]:
        head = state.head if state.head is not None else await self.head(channel)
        write_ids = [uuid.uuid4().hex for _ in events]
        for conflicts in range(_MAX_CONFLICTS):
            if conflicts and conflicts % _PROBES_BEFORE_REQUERY == 0:
                head = await self.head(channel)
            epoch = head.epoch or new_epoch()
            stored = [
                StoredEvent(head.seq + 1 + i, epoch, e.data, e.event) for i, e in enumerate(events)
            ]
            items = [self._item(channel, s, wid) for s, wid in zip(stored, write_ids, strict=True)]
            try:
                await self._write(items)
            except _SlotTaken as taken:
                if not taken.own:
                    self.stats.conflicts += 1
                    head = Position(taken.item["epoch"]["S"], int(taken.item[SORT_KEY]["N"]))
                    continue
            state.head = stored[-1].position
            return stored
        raise StoreUnavailable(
            f"channel {channel!r} is under heavy concurrent publishing; retry the publish"
        )

    def _item(self, channel: str, event: StoredEvent, write_id: str) -> dict[str, Any]:
        item: dict[str, Any] = {
            PARTITION_KEY: {"S": channel},
            SORT_KEY: {"N": str(event.seq)},
            "epoch": {"S": event.epoch},
            "wid": {"S": write_id},
            "data": {"S": event.data},
            TTL_ATTRIBUTE: {"N": str(int(self._clock()) + self._retention)},
        }
        if event.event is not None:
            item["event"] = {"S": event.event}
        return item

    async def _write(self, items: list[dict[str, Any]]) -> None:
        """Conditionally put ``items``; raise ``_SlotTaken`` naming the highest occupied slot."""
        condition: Any = {
            "ConditionExpression": "attribute_not_exists(#s)",
            "ExpressionAttributeNames": {"#s": SORT_KEY},
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        self.stats.writes += 1
        with _translated(self._table):
            try:
                if len(items) == 1:
                    await self._client.put_item(TableName=self._table, Item=items[0], **condition)
                else:
                    puts: Any = [
                        {"Put": {"TableName": self._table, "Item": item, **condition}}
                        for item in items
                    ]
                    await self._client.transact_write_items(TransactItems=puts)
            except ClientError as exc:
                taken = _taken_slot(exc, items)
                if taken is None:
                    raise
                raise taken from exc


def _taken_slot(exc: ClientError, items: list[dict[str, Any]]) -> _SlotTaken | None:
    """The occupied slot a failed condition reports, or None for any other error."""
    response: dict[str, Any] = dict(exc.response)
    code = response.get("Error", {}).get("Code")
    if code == "ConditionalCheckFailedException":
        found = [(items[0], response.get("Item"))]
    elif code == "TransactionCanceledException":
        reasons = response.get("CancellationReasons", [])
        found = [
            (mine, reason.get("Item"))
            for mine, reason in zip(items, reasons, strict=False)
            if reason.get("Code") == "ConditionalCheckFailed"
        ]
    else:
        return None
    if not found or any(existing is None for _, existing in found):
        return None  # a TransactionConflict or throttle on the transaction: not a seq race
    own = len(found) == len(items) and all(
        existing["wid"] == mine["wid"] for mine, existing in found if existing is not None
    )
    highest = max(
        (existing for _, existing in found if existing is not None),
        key=lambda item: int(item[SORT_KEY]["N"]),
    )
    return _SlotTaken(highest, own)
