"""The log's conditional writes (gateway/writes.py) against the embedded DynamoDB:
each lands whole or answers what stands in its way, and writes nothing then."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest

from gateway.dynamodb import open_dynamodb
from gateway.errors import StoreMisconfigured
from gateway.items import Batch, LogEnd, StoredEvent, batch_item, idempotency_record
from gateway.metrics import Metrics, RecordedMetrics
from gateway.settings import Settings
from gateway.writes import put_batch, transact_batch
from infra.local import local_session
from infra.table import ensure_table
from tests.tables import delete_items, put_raw_items, raw_items

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

NOW = 1_000_000.0


def _item(seq: int, write_id: str, epoch: str = "aaaaaaaa", since: int = 1) -> dict[str, Any]:
    events = (StoredEvent(epoch, seq, f'"{write_id}"', None, since, NOW),)
    return batch_item("c", Batch(events, 1_000_600, write_id))


def _record(key: str, write_id: str, expires_at: int = 1_000_600) -> dict[str, Any]:
    events = (StoredEvent("aaaaaaaa", 1, "1"),)
    return idempotency_record("c", key, "digest", Batch(events, expires_at, write_id))


def _end(item: dict[str, Any], write_id: str | None = None) -> LogEnd:
    seq = int(item["seq"]["N"])
    return LogEnd("aaaaaaaa", 1, seq, 1_000_600, seq, write_id or item["wid"]["S"])


@asynccontextmanager
async def _table(settings: Settings) -> AsyncIterator[DynamoDBClient]:
    async with open_dynamodb(settings, local_session()) as client:
        await ensure_table(client, settings.table_name)
        yield client


async def _seqs(settings: Settings, channel: str = "c") -> list[tuple[int, str]]:
    return [(int(i["seq"]["N"]), i["wid"]["S"]) for i in await raw_items(settings, channel)]


async def test_a_put_takes_a_free_slot_and_answers_who_holds_a_taken_one(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    async with _table(settings) as client:
        table, metrics = settings.table_name, Metrics()
        assert await put_batch(client, table, metrics, _item(1, "w1")) is None
        # An earlier attempt of this very write landed (its answer was lost): ours.
        assert await put_batch(client, table, metrics, _item(1, "w1")) is None
        assert await put_batch(client, table, metrics, _item(1, "w2")) == _item(1, "w1")
    assert await _seqs(settings) == [(1, "w1")]


async def test_a_transaction_writes_the_batch_and_its_records_when_the_end_is_unchanged(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    below = _item(3, "w1")
    async with _table(settings) as client:
        await put_raw_items(settings, [below])
        answer = await transact_batch(
            client,
            settings.table_name,
            Metrics(),
            _item(4, "w2", "bbbbbbbb", 4),
            _end(below),
            [_record("k1", "w2"), _record("k2", "w2")],
            NOW,
        )
    assert answer == (None, False, [None, None])
    assert await _seqs(settings) == [(3, "w1"), (4, "w2")]
    assert await _seqs(settings, "c#k1") == await _seqs(settings, "c#k2") == [(0, "w2")]


async def test_a_taken_key_is_not_read_as_a_moved_item(
    make_settings: Callable[..., Settings],
) -> None:
    # The check of the followed item passes while a record's key is taken: only the
    # record is answered, the item did not move.
    settings = make_settings()
    below, live = _item(3, "w1"), _record("live", "w1")
    async with _table(settings) as client:
        await put_raw_items(settings, [below, live])
        answer = await transact_batch(
            client,
            settings.table_name,
            Metrics(),
            _item(4, "w2"),
            _end(below),
            [_record("live", "w2"), _record("free", "w2")],
            NOW,
        )
    assert answer == (None, False, [live, None])
    assert await _seqs(settings) == [(3, "w1")]


async def test_an_epoch_is_not_opened_above_an_item_that_moved(
    make_settings: Callable[..., Settings],
) -> None:
    # The condition of the item below, not the free slot, refuses these writes.
    settings = make_settings()
    below = _item(3, "w1")
    async with _table(settings) as client:
        await put_raw_items(settings, [below])
        opening = _item(4, "w3", "bbbbbbbb", 4)
        replaced = await transact_batch(
            client, settings.table_name, Metrics(), opening, _end(below, "w0"), [], NOW
        )
        assert replaced == (None, True, [])
        await delete_items(settings, "c", [3])
        deleted = await transact_batch(
            client, settings.table_name, Metrics(), opening, _end(below), [_record("k", "w3")], NOW
        )
        assert deleted == (None, True, [None])
    assert await _seqs(settings) == []
    assert await _seqs(settings, "c#k") == []


async def test_a_transaction_answers_the_slots_holder_or_a_live_record_and_writes_nothing(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    holder, live, expired = _item(1, "w1"), _record("live", "w1"), _record("old", "w0", 999_999)
    async with _table(settings) as client:
        await put_raw_items(settings, [holder, live, expired])
        table, metrics = settings.table_name, Metrics()
        taken = await transact_batch(client, table, metrics, _item(1, "w2"), None, [], NOW)
        assert taken == (holder, False, [])
        records = [_record("old", "w3"), _record("live", "w3")]
        held = await transact_batch(client, table, metrics, _item(2, "w3"), None, records, NOW)
        assert held == (None, False, [None, live])
        # The record that expired (but TTL has not deleted yet) no longer counts.
        fresh = [_record("old", "w4")]
        assert await transact_batch(client, table, metrics, _item(2, "w4"), None, fresh, NOW) == (
            None,
            False,
            [None],
        )
        # A retry of that transaction, after its answer was lost, finds its own write.
        again = await transact_batch(client, table, metrics, _item(2, "w4"), None, fresh, NOW)
        assert again == (None, False, [None])
    assert await _seqs(settings) == [(1, "w1"), (2, "w4")]
    assert await _seqs(settings, "c#old") == [(0, "w4")]
    assert await _seqs(settings, "c#live") == [(0, "w1")]


async def test_each_write_is_counted_by_its_operation_and_a_missing_table_named(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(table_name="no-such-table")
    metrics = RecordedMetrics()
    async with open_dynamodb(settings, local_session()) as client:
        with pytest.raises(StoreMisconfigured, match=r"^DynamoDB table 'no-such-table' is missing"):
            await put_batch(client, "no-such-table", metrics, _item(1, "w1"))
        with pytest.raises(StoreMisconfigured, match=r"^DynamoDB table 'no-such-table' is missing"):
            await transact_batch(client, "no-such-table", metrics, _item(1, "w1"), None, [], NOW)
    counted = {
        operation: metrics.registry.get_sample_value(
            "sse_gateway_store_requests_total", {"operation": operation}
        )
        for operation in ("put", "transact_write", "query")
    }
    assert counted == {"put": 1, "transact_write": 1, "query": 0}
