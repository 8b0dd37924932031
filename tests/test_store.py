from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

from gateway.cursor import EMPTY, parse_event_id
from gateway.errors import StoreMisconfigured, StoreUnavailable
from gateway.settings import Settings
from gateway.store import EventLog, NewEvent
from tests.servers import FaultProxy

OpenLog = Callable[..., AbstractAsyncContextManager[EventLog]]


def _events(*values: object) -> list[NewEvent]:
    return [NewEvent(json.dumps(v)) for v in values]


async def _purge(log: EventLog, table: str, channel: str, seqs: list[int]) -> None:
    """Delete a channel's items, as an operator purging it would."""
    for seq in seqs:
        await log._client.delete_item(
            TableName=table, Key={"channel": {"S": channel}, "seq": {"N": str(seq)}}
        )


async def _all(log: EventLog, channel: str) -> list[int]:
    seqs: list[int] = []
    after = 0
    while True:
        page = await log.read_after(channel, after, limit=7)
        seqs.extend(e.seq for e in page.events)
        after = page.scanned_to
        if not page.more:
            return seqs


async def test_append_assigns_gapless_seqs_from_one(open_log: OpenLog) -> None:
    async with open_log() as log:
        assert await log.head("c") == EMPTY
        first = await log.append("c", _events("a"))
        batch = await log.append("c", _events("b", "c", "d"))
        assert [e.seq for e in first + batch] == [1, 2, 3, 4]
        assert len({e.epoch for e in first + batch}) == 1
        head = await log.head("c")
        assert (head.epoch, head.seq) == (first[0].epoch, 4)
        assert await _all(log, "c") == [1, 2, 3, 4]
        page = await log.read_after("c", 2)
        assert [json.loads(e.data) for e in page.events] == ["c", "d"]


async def test_append_keeps_event_names_and_channels_apart(open_log: OpenLog) -> None:
    async with open_log() as log:
        await log.append("a", [NewEvent("1", event="tick")])
        await log.append("b", _events(2, 3))
        (event,) = (await log.read_after("a", 0)).events
        assert (event.event, event.data, event.seq) == ("tick", "1", 1)
        assert await _all(log, "b") == [1, 2]


async def test_append_concurrent_in_one_process_is_gapless_and_unique(open_log: OpenLog) -> None:
    async with open_log() as log:
        results = await asyncio.gather(*(log.append("c", _events(i, i)) for i in range(20)))
        seqs = sorted(e.seq for batch in results for e in batch)
        assert seqs == list(range(1, 41))
        for batch in results:  # a batch is consecutive
            assert [e.seq for e in batch] == [batch[0].seq, batch[0].seq + 1]
        assert log.stats.conflicts == 0


async def test_append_probes_past_slots_another_process_took(open_log: OpenLog) -> None:
    async with open_log() as mine, open_log() as other:
        await mine.append("c", _events(1))  # mine now caches head = 1
        await other.append("c", _events(2, 3, 4))
        await other.append("c", _events(5))
        (stored,) = await mine.append("c", _events(6))
        assert stored.seq == 6
        assert mine.stats.conflicts >= 1
        batch = await other.append("c", _events(7, 8))  # other's cache is stale too
        assert [e.seq for e in batch] == [7, 8]
        assert await _all(mine, "c") == list(range(1, 9))


async def test_append_adopts_the_epoch_of_the_slot_it_lost_to(
    open_log: OpenLog, make_settings: Callable[..., Settings]
) -> None:
    table = make_settings().table_name
    async with open_log() as mine, open_log() as other:
        (old,) = await mine.append("c", _events("a"))  # mine caches head = (A, 1)
        await _purge(mine, table, "c", [1])
        restarted = await other.append("c", _events("b", "c"))  # a new epoch B at 1..2
        (stored,) = await mine.append("c", _events("d"))  # loses seq 2 to B, probes on
        assert stored.seq == 3
        assert stored.epoch == restarted[0].epoch != old.epoch


async def test_append_recognises_its_own_write_after_a_lost_response(
    open_log: OpenLog, fault_proxy: FaultProxy
) -> None:
    async with open_log(dynamodb_endpoint_url=fault_proxy.url) as log:
        fault_proxy.drop_response_once("putitem")
        (stored,) = await log.append("c", _events("once"))
        assert fault_proxy.seen.count("putitem") == 2  # botocore retried the same put
        assert stored.seq == 1
        fault_proxy.drop_response_once("transactwriteitems")
        batch = await log.append("c", _events("x", "y"))
        assert fault_proxy.seen.count("transactwriteitems") == 2
        assert [e.seq for e in batch] == [2, 3]
        assert await _all(log, "c") == [1, 2, 3]
        (after,) = await log.append("c", _events("z"))
        assert after.seq == 4


async def test_read_after_filters_expired_events(open_log: OpenLog) -> None:
    now = [1_000_000.0]
    async with open_log(clock=lambda: now[0], retention_seconds=60) as log:
        await log.append("c", _events(1, 2))
        now[0] += 30
        await log.append("c", _events(3))
        now[0] += 40  # 1 and 2 expired, 3 has not
        page = await log.read_after("c", 0)
        assert [e.seq for e in page.events] == [3]
        assert page.scanned_to == 3
        assert (await log.head("c")).seq == 3  # expired items still hold their seqs
        (next_event,) = await log.append("c", _events(4))
        assert next_event.seq == 4


async def test_log_starts_a_new_epoch_when_the_channel_starts_over(
    open_log: OpenLog, make_settings: Callable[..., Settings]
) -> None:
    async with open_log() as log:
        (old,) = await log.append("c", _events(1))
        await _purge(log, make_settings().table_name, "c", [1])
        async with open_log() as fresh_process:
            (new,) = await fresh_process.append("c", _events(2))
        assert new.seq == 1
        assert new.epoch != old.epoch
        assert parse_event_id(new.event_id) != parse_event_id(old.event_id)


async def test_store_errors_become_gateway_errors(
    open_log: OpenLog, fault_proxy: FaultProxy
) -> None:
    async with open_log(
        dynamodb_endpoint_url=fault_proxy.url, dynamodb_max_attempts=2, dynamodb_timeout_seconds=1
    ) as log:
        fault_proxy.refuse = True
        with pytest.raises(StoreUnavailable, match="try again"):
            await log.append("c", _events(1))
        with pytest.raises(StoreUnavailable):
            await log.head("c")
        fault_proxy.refuse = False
        (stored,) = await log.append("c", _events(1))
        assert stored.seq == 1
    async with open_log(create_table=False, table_name="no-such-table") as log:
        with pytest.raises(StoreMisconfigured, match="SSE_GATEWAY_TABLE_NAME"):
            await log.read_after("c", 0)
