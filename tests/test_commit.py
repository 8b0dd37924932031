"""Group commit (gateway/commit.py) against the embedded DynamoDB: concurrent appends
on a channel share writes, and each still gets its own ids and its own error."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

from gateway.commit import Appended
from gateway.errors import IdempotencyKeyReused, StoreUnavailable
from gateway.items import NewEvent, StoredEvent
from gateway.settings import Settings
from gateway.store import EventLog
from tests.servers import FaultProxy
from tests.tables import raw_items

OpenLog = Callable[..., AbstractAsyncContextManager[EventLog]]


def _events(*values: object) -> list[NewEvent]:
    return [NewEvent(json.dumps(v)) for v in values]


async def _log(log: EventLog, channel: str) -> list[StoredEvent]:
    events: list[StoredEvent] = []
    after = 0
    while True:
        page = await log.read_after(channel, after)
        events.extend(page.events)
        after = page.scanned_to
        if not page.more:
            return events


def _assert_consecutive(appended: Appended, count: int) -> None:
    seqs = [e.seq for e in appended.events]
    assert seqs == list(range(seqs[0], seqs[0] + count))
    assert len({e.epoch for e in appended.events}) == 1


async def test_concurrent_appends_share_writes_and_each_keeps_its_ids_and_order(
    open_log: OpenLog, make_settings: Callable[..., Settings]
) -> None:
    publishers, rounds = 8, 6

    async def publisher(p: int) -> list[tuple[list[list[object]], Appended]]:
        done = []
        for n in range(rounds):
            values: list[list[object]] = [[p, n, k] for k in range(1 + (p + n) % 3)]
            key = f"{p}-{n}" if p % 2 else None  # half of them keyed, in the same groups
            done.append((values, await log.append("c", _events(*values), idempotency_key=key)))
        return done

    async with open_log() as log:
        results = await asyncio.gather(*(publisher(p) for p in range(publishers)))
        stored = await _log(log, "c")
    appends = publishers * rounds
    assert log.stats.writes < appends / 2  # merged: here about one write per round
    assert log.stats.conflicts == 0
    by_id = {e.event_id: json.loads(e.data) for e in stored}
    assert len(by_id) == len(stored)  # no duplicates
    answered = [(values, a) for done in results for values, a in done]
    assert sum(len(values) for values, _ in answered) == len(stored)
    for values, appended in answered:  # each caller's own ids, consecutive, for its events
        assert not appended.replayed
        _assert_consecutive(appended, len(values))
        assert [by_id[e.event_id] for e in appended.events] == values
    order = [tuple(v) for v in by_id.values()]
    for p in range(publishers):  # each caller's events stored in its own order
        mine = [v for v in order if v[0] == p]
        assert mine == sorted(mine)
    assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
    items = await raw_items(make_settings(), "c")
    assert len(items) == log.stats.writes
    for p in range(1, publishers, 2):  # each key's record names its append's own ids
        for n, (_, appended) in enumerate(results[p]):
            (record,) = await raw_items(make_settings(), f"c#{p}-{n}")
            assert (int(record["first"]["N"]), int(record["count"]["N"])) == (
                appended.events[0].seq,
                len(appended.events),
            )


async def test_a_failed_group_write_fails_every_member_and_keyed_retries_store_each_once(
    open_log: OpenLog, fault_proxy: FaultProxy
) -> None:
    async with open_log(dynamodb_endpoint_url=fault_proxy.url, dynamodb_max_attempts=1) as log:
        await log.append("c", _events("first"))  # the log's end is now cached
        writes = log.stats.writes
        fault_proxy.drop_response_once("transactwriteitems")  # lands; its answer is lost
        keys = [f"k{i}" for i in range(5)]
        outcomes = await asyncio.gather(
            *(log.append("c", _events(key), idempotency_key=key) for key in keys),
            log.append("c", _events("unkeyed")),
            return_exceptions=True,
        )
        assert log.stats.writes == writes + 1  # one write carried all six
        assert all(isinstance(o, StoreUnavailable) for o in outcomes)
        retried = await asyncio.gather(
            *(log.append("c", _events(key), idempotency_key=key) for key in keys)
        )
        assert all(a.replayed for a in retried)
        again = await log.append("c", _events("after"))
        stored = await _log(log, "c")
    data = [json.loads(e.data) for e in stored]
    assert data == ["first", *keys, "unkeyed", "after"]  # each once, in the group's order
    by_id = {e.event_id: json.loads(e.data) for e in stored}
    assert [[by_id[e.event_id] for e in a.events] for a in retried] == [[k] for k in keys]
    assert again.events[0].seq == len(stored)


async def test_a_member_whose_key_was_used_leaves_the_group_and_the_others_are_written(
    open_log: OpenLog,
) -> None:
    async with open_log() as log:
        used = await log.append("c", _events("used"), idempotency_key="used")
        earlier = await log.append("c", _events("earlier"), idempotency_key="repeat")
        writes = log.stats.writes
        plain, reused, fresh, repeat, last = await asyncio.gather(
            log.append("c", _events("a")),
            log.append("c", _events("other events"), idempotency_key="used"),
            log.append("c", _events("b", "b2"), idempotency_key="fresh"),
            log.append("c", _events("earlier"), idempotency_key="repeat"),
            log.append("c", _events("c")),
            return_exceptions=True,
        )
        stored = await _log(log, "c")
    assert isinstance(reused, IdempotencyKeyReused)
    assert isinstance(repeat, Appended) and repeat.replayed
    assert [e.event_id for e in repeat.events] == [e.event_id for e in earlier.events]
    assert all(isinstance(a, Appended) and not a.replayed for a in (plain, fresh, last))
    assert log.stats.writes == writes + 2  # cancelled once, then written without them
    assert [json.loads(e.data) for e in stored] == ["used", "earlier", "a", "b", "b2", "c"]
    assert used.events[0].seq == 1


async def test_a_group_that_would_outgrow_one_item_is_split(
    open_log: OpenLog, make_settings: Callable[..., Settings]
) -> None:
    async with open_log() as log:
        big = "x" * 150_000  # two fit in one item (380,000 bytes of events), three do not
        await asyncio.gather(*(log.append("big", _events(big)) for _ in range(3)))
        await asyncio.gather(*(log.append("many", _events(*range(25))) for _ in range(5)))
        await asyncio.gather(
            *(log.append("keyed", _events(i), idempotency_key=f"k{i}") for i in range(100))
        )
        for channel, total in (("big", 3), ("many", 125), ("keyed", 100)):
            assert [e.seq for e in await _log(log, channel)] == list(range(1, total + 1))
    sizes = {
        channel: [len(item["events"]["L"]) for item in await raw_items(make_settings(), channel)]
        for channel in ("big", "many", "keyed")
    }
    # At most 100 events in an item, and 98 keyed appends in a transaction (100 items
    # with the check of the item below when the write opens an epoch).
    assert sizes == {"big": [2, 1], "many": [100, 25], "keyed": [98, 2]}


async def _in_flight(log: EventLog) -> None:
    """Until the channel's writer has sent its first request."""
    while log.stats.writes + log.stats.queries == 0:  # noqa: ASYNC110
        await asyncio.sleep(0)


async def test_a_caller_that_gives_up_is_not_written_and_cancels_no_one_else(
    open_log: OpenLog,
) -> None:
    async with open_log() as log:
        first = asyncio.create_task(log.append("c", _events("a")))
        await _in_flight(log)
        gave_up = asyncio.create_task(log.append("c", _events("gave up")))
        third = asyncio.create_task(log.append("c", _events("c")))
        await asyncio.sleep(0)  # both wait behind the first write
        gave_up.cancel()
        await asyncio.gather(first, third)
        with pytest.raises(asyncio.CancelledError):
            await gave_up
        # A caller that gives up while its group is being written: the write goes on.
        writes = log.stats.writes
        leaving = asyncio.create_task(log.append("c", _events("d")))
        staying = asyncio.create_task(log.append("c", _events("e")))
        while log.stats.writes == writes:  # noqa: ASYNC110
            await asyncio.sleep(0)
        leaving.cancel()
        (stored,) = (await staying).events
        assert [json.loads(e.data) for e in await _log(log, "c")] == ["a", "c", "d", "e"]
    assert stored.seq == 4
