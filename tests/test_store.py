from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

from gateway.cursor import parse_event_id
from gateway.dynamodb import open_dynamodb
from gateway.errors import IdempotencyKeyReused, StoreMisconfigured, StoreUnavailable
from gateway.items import NewEvent, StoredEvent
from gateway.settings import Settings
from gateway.store import EventLog
from infra.local import local_session
from infra.table import ensure_table
from tests.servers import FaultProxy
from tests.tables import delete_items, raw_items

OpenLog = Callable[..., AbstractAsyncContextManager[EventLog]]


def _events(*values: object) -> list[NewEvent]:
    return [NewEvent(json.dumps(v)) for v in values]


async def _append(log: EventLog, channel: str, *values: object) -> list[StoredEvent]:
    """Append ``values`` as one batch; the stored events."""
    return (await log.append(channel, _events(*values))).events


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
        assert await log.last_batch("c") is None
        first = await _append(log, "c", "a")
        batch = await _append(log, "c", "b", "c", "d")
        assert [e.seq for e in first + batch] == [1, 2, 3, 4]
        assert len({e.epoch for e in first + batch}) == 1
        newest = await log.last_batch("c")
        assert newest is not None and newest.end.last == 4 and newest.first == 2
        assert newest.events == tuple(batch)
        assert await _all(log, "c") == [1, 2, 3, 4]
        page = await log.read_after("c", 2, aligned=False)  # 2 is inside the batch
        assert [json.loads(e.data) for e in page.events] == ["c", "d"]


async def test_append_keeps_event_names_and_channels_apart(open_log: OpenLog) -> None:
    async with open_log() as log:
        await log.append("a", [NewEvent("1", event="tick")])
        await _append(log, "b", 2, 3)
        (event,) = (await log.read_after("a", 0)).events
        assert (event.event, event.data, event.seq) == ("tick", "1", 1)
        assert await _all(log, "b") == [1, 2]


async def test_append_concurrent_in_one_process_is_gapless_and_unique(open_log: OpenLog) -> None:
    async with open_log() as log:
        results = await asyncio.gather(*(_append(log, "c", i, i) for i in range(20)))
        seqs = sorted(e.seq for batch in results for e in batch)
        assert seqs == list(range(1, 41))
        for batch in results:  # a batch is consecutive
            assert [e.seq for e in batch] == [batch[0].seq, batch[0].seq + 1]
        assert log.stats.conflicts == 0


async def test_append_probes_past_slots_another_process_took(open_log: OpenLog) -> None:
    async with open_log() as mine, open_log() as other:
        await _append(mine, "c", 1)  # mine now caches head = 1
        await _append(other, "c", 2, 3, 4)
        await _append(other, "c", 5)
        (stored,) = await _append(mine, "c", 6)
        assert stored.seq == 6
        assert mine.stats.conflicts >= 1
        batch = await _append(other, "c", 7, 8)  # other's cache is stale too
        assert [e.seq for e in batch] == [7, 8]
        assert await _all(mine, "c") == list(range(1, 9))


async def test_append_adopts_the_epoch_of_the_slot_it_lost_to(
    open_log: OpenLog, make_settings: Callable[..., Settings]
) -> None:
    async with open_log() as mine, open_log() as other:
        (old,) = await _append(mine, "c", "a")  # mine caches head = (A, 1)
        await delete_items(make_settings(), "c", [1])  # purged by an operator
        # A new epoch B at 1 and 2. (Had B's first append been one batch over 1..2,
        # mine would not collide with it at seq 2: purge with publishers stopped.)
        restarted = [(await _append(other, "c", v))[0] for v in "bc"]
        (stored,) = await _append(mine, "c", "d")  # loses seq 2 to B, moves past it
        assert stored.seq == 3
        assert stored.epoch == restarted[0].epoch != old.epoch


async def test_append_recognises_its_own_write_after_a_lost_response(
    open_log: OpenLog, fault_proxy: FaultProxy
) -> None:
    async with open_log(dynamodb_endpoint_url=fault_proxy.url) as log:
        fault_proxy.drop_response_once("putitem")
        (stored,) = await _append(log, "c", "once")
        assert fault_proxy.seen.count("putitem") == 2  # botocore retried the same put
        assert stored.seq == 1
        # Every later write is a transaction (with the check of the item it follows).
        fault_proxy.drop_response_once("transactwriteitems")
        batch = await _append(log, "c", "x", "y")
        assert fault_proxy.seen.count("transactwriteitems") == 2
        assert [e.seq for e in batch] == [2, 3]
        fault_proxy.drop_response_once("transactwriteitems")
        keyed = await log.append("c", _events("k"), idempotency_key="k1")
        assert fault_proxy.seen.count("transactwriteitems") == 4
        assert ([e.seq for e in keyed.events], keyed.replayed) == ([4], False)
        assert await _all(log, "c") == [1, 2, 3, 4]
        (after,) = await _append(log, "c", "z")
        assert after.seq == 5


async def test_read_after_filters_expired_events(open_log: OpenLog) -> None:
    now = [1_000_000.0]
    async with open_log(clock=lambda: now[0], retention_seconds=600) as log:
        await _append(log, "c", 1, 2)
        now[0] += 300
        await _append(log, "c", 3)
        now[0] += 400  # 1 and 2 expired, 3 has not
        page = await log.read_after("c", 0)
        assert [e.seq for e in page.events] == [3]
        assert page.scanned_to == 3
        (next_event,) = await _append(log, "c", 4)
        assert next_event.seq == 4


async def test_log_starts_a_new_epoch_when_the_channel_starts_over(
    open_log: OpenLog, make_settings: Callable[..., Settings]
) -> None:
    async with open_log() as log:
        (old,) = await _append(log, "c", 1)
        await delete_items(make_settings(), "c", [1])
        async with open_log() as fresh_process:
            (new,) = await _append(fresh_process, "c", 2)
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
            await _append(log, "c", 1)
        with pytest.raises(StoreUnavailable):
            await log.last_batch("c")
        fault_proxy.refuse = False
        (stored,) = await _append(log, "c", 1)
        assert stored.seq == 1
    async with open_log(create_table=False, table_name="no-such-table") as log:
        with pytest.raises(StoreMisconfigured, match="SSE_GATEWAY_TABLE_NAME"):
            await log.read_after("c", 0)


async def test_a_cached_head_is_not_trusted_once_its_item_may_be_gone(
    open_log: OpenLog, make_settings: Callable[..., Settings]
) -> None:
    now = [1_000_000.0]
    async with (
        open_log(clock=lambda: now[0], retention_seconds=600) as mine,
        open_log(clock=lambda: now[0], retention_seconds=600) as other,
    ):
        old = [(await _append(mine, "c", i))[0] for i in range(3)]  # mine caches A-3
        now[0] += 700
        await delete_items(make_settings(), "c", [2, 3, 1])  # TTL removed them all
        (restarted,) = await _append(other, "c", "b")  # a new epoch B at 1
        (appended,) = await _append(mine, "c", "a")
        assert appended.epoch == restarted.epoch != old[0].epoch
        assert appended.seq == restarted.seq + 1
        assert {item["epoch"]["S"] for item in await raw_items(make_settings(), "c")} == {
            restarted.epoch
        }


async def test_a_cached_head_is_not_trusted_within_a_write_window_of_its_expiry(
    open_log: OpenLog, make_settings: Callable[..., Settings], fault_proxy: FaultProxy
) -> None:
    # Unexpired by this process's clock, but a write placed now may land after the
    # expiry, when TTL may have deleted the item: the append reads the end first,
    # rather than write after the cached end and lose to the condition on it.
    window = make_settings().write_window_seconds
    now = [1_000_000.0]
    async with (
        open_log(
            clock=lambda: now[0], retention_seconds=600, dynamodb_endpoint_url=fault_proxy.url
        ) as mine,
        open_log(clock=lambda: now[0] + window, retention_seconds=600) as other,
    ):
        old = [(await _append(mine, "c", i))[0] for i in range(3)]  # mine caches A-3
        now[0] += 600 - window / 2  # A-3 expires in half a write window
        await delete_items(make_settings(), "c", [1, 2, 3])  # TTL, by the time it lands
        (restarted,) = await _append(other, "c", "b")  # a new epoch B at 1
        calls = len(fault_proxy.seen)
        (appended,) = await _append(mine, "c", "a")
        assert restarted.epoch != old[0].epoch
        assert (appended.epoch, appended.seq) == (restarted.epoch, restarted.seq + 1)
        assert fault_proxy.seen[calls:] == ["query", "transactwriteitems"]  # read, then write once


async def test_after_ttl_deleted_the_newest_items_appends_open_a_new_epoch_above_them(
    open_log: OpenLog, make_settings: Callable[..., Settings]
) -> None:
    now = [1_000_000.0]
    async with open_log(clock=lambda: now[0], retention_seconds=600) as log:
        old = [(await _append(log, "c", i))[0] for i in range(5)]
        now[0] += 601  # all five expired
        await delete_items(make_settings(), "c", [5, 4])  # TTL deletes in any order
        async with open_log(clock=lambda: now[0], retention_seconds=600) as fresh_process:
            new = await _append(fresh_process, "c", "x", "y")
        again = await _append(log, "c", "z")  # a process whose cached head is expired
    old_ids = {e.event_id for e in old}
    assert not old_ids & {e.event_id for e in new + again}
    assert [e.seq for e in new + again] == [4, 5, 6]  # above the surviving item 3
    assert {e.epoch for e in new + again} == {new[0].epoch} != {old[0].epoch}
    assert {e.since for e in new + again} == {4}


async def test_writers_that_read_the_end_either_side_of_a_ttl_deletion_open_one_epoch(
    open_log: OpenLog, make_settings: Callable[..., Settings], fault_proxy: FaultProxy
) -> None:
    now = [1_000_000.0]
    async with (
        open_log(clock=lambda: now[0], retention_seconds=600) as first,
        open_log(
            clock=lambda: now[0], retention_seconds=600, dynamodb_endpoint_url=fault_proxy.url
        ) as late,
    ):
        old = await _append(first, "c", "a") + await _append(first, "c", "b", "c")
        now[0] += 601  # items 1 and 2..3 expired
        hold = fault_proxy.hold("query")
        late_append = asyncio.create_task(_append(late, "c", "late"))
        assert await asyncio.to_thread(hold.applied.wait, 10)  # late read the end: 2..3
        await delete_items(make_settings(), "c", [2])  # TTL
        opened = await _append(first, "c", "x", "y")  # reads the end: 1; opens at 2
        hold.released.set()
        (appended,) = await late_append  # placed above 2..3: its opening must not stand
    assert [e.seq for e in opened] == [2, 3] and opened[0].epoch != old[0].epoch
    assert (appended.epoch, appended.seq) == (opened[0].epoch, 4)
    epochs = [item["epoch"]["S"] for item in await raw_items(make_settings(), "c")]
    assert epochs == [old[0].epoch, opened[0].epoch, opened[0].epoch]


async def test_an_epoch_opened_while_its_answer_was_lost_is_written_once(
    open_log: OpenLog, make_settings: Callable[..., Settings], fault_proxy: FaultProxy
) -> None:
    now = [1_000_000.0]
    url = fault_proxy.url
    async with open_log(
        clock=lambda: now[0], retention_seconds=600, dynamodb_endpoint_url=url
    ) as log:
        (old,) = await _append(log, "c", "a")
        now[0] += 601
        fault_proxy.drop_response_once("transactwriteitems")
        (opened,) = await _append(log, "c", "b")
        assert fault_proxy.seen.count("transactwriteitems") == 2  # botocore retried it
    assert (opened.seq, opened.since) == (2, 2) and opened.epoch != old.epoch
    assert [int(item["seq"]["N"]) for item in await raw_items(make_settings(), "c")] == [1, 2]


async def test_expiry_never_decreases_with_seq_whatever_the_writers_clocks(
    open_log: OpenLog, make_settings: Callable[..., Settings]
) -> None:
    async with (
        open_log(clock=lambda: 1_000_000.0, retention_seconds=600) as ahead,
        open_log(clock=lambda: 999_000.0, retention_seconds=600) as behind,
    ):
        await _append(ahead, "c", 1)
        await _append(behind, "c", 2)  # loses seq 1 to ahead, then writes 2
        await _append(ahead, "c", 3)
    items = await raw_items(make_settings(), "c")
    expiries = [int(item["expires_at"]["N"]) for item in items]
    assert [int(item["seq"]["N"]) for item in items] == [1, 2, 3]
    assert expiries == sorted(expiries) and expiries[0] == 1_000_600


async def test_a_batch_is_one_item_and_a_cursor_inside_it_resumes_within_it(
    open_log: OpenLog, make_settings: Callable[..., Settings]
) -> None:
    async with open_log() as log:
        await _append(log, "c", 1, 2, 3)
        await _append(log, "c", 4)
        assert [int(i["seq"]["N"]) for i in await raw_items(make_settings(), "c")] == [1, 4]
        inside = await log.read_after("c", 2, aligned=False)
        assert ([e.seq for e in inside.events], inside.scanned_to) == ([3, 4], 4)
        at_end = await log.read_after("c", 3, aligned=False)
        assert [e.seq for e in at_end.events] == [4]
        queries = log.stats.queries
        await log.read_after("c", 3)  # an aligned reader needs no look back
        assert log.stats.queries == queries + 1


async def test_an_idempotency_key_stores_events_once_and_answers_the_original_ids(
    open_log: OpenLog, make_settings: Callable[..., Settings]
) -> None:
    async with open_log() as log, open_log() as other_process:
        first = await log.append("c", _events(1, 2), idempotency_key="job-7")
        repeat = await other_process.append("c", _events(1, 2), idempotency_key="job-7")
        assert (first.replayed, repeat.replayed) == (False, True)
        assert [e.event_id for e in repeat.events] == [e.event_id for e in first.events]
        elsewhere = await log.append("d", _events(1, 2), idempotency_key="job-7")
        assert not elsewhere.replayed  # a key is per channel
        with pytest.raises(IdempotencyKeyReused, match="new key"):
            await log.append("c", _events(3), idempotency_key="job-7")
        concurrent = await asyncio.gather(
            *(log.append("c", _events("x"), idempotency_key="same") for _ in range(5))
        )
        assert len({tuple(e.event_id for e in a.events) for a in concurrent}) == 1
        assert sum(not a.replayed for a in concurrent) == 1
    assert await _all_seqs(make_settings(), "c") == [1, 2, 3]


async def test_an_idempotency_record_expires_with_its_events(open_log: OpenLog) -> None:
    now = [1_000_000.0]
    async with open_log(clock=lambda: now[0], retention_seconds=600) as log:
        first = await log.append("c", _events(1), idempotency_key="k")
        now[0] += 601  # TTL has not deleted the record yet, but it has expired
        later = await log.append("c", _events(2), idempotency_key="k")
        assert not later.replayed
        assert later.events[0].event_id != first.events[0].event_id


async def test_an_idempotent_append_that_loses_its_slot_keeps_record_and_events_together(
    open_log: OpenLog, make_settings: Callable[..., Settings]
) -> None:
    async with open_log() as mine, open_log() as other:
        await _append(mine, "c", "a")  # mine caches head = 1
        await _append(other, "c", "b")
        keyed = await mine.append("c", _events("k"), idempotency_key="k")  # loses seq 2
        assert mine.stats.conflicts == 1
        replay = await other.append("c", _events("k"), idempotency_key="k")
        assert [e.event_id for e in replay.events] == [e.event_id for e in keyed.events]
        assert keyed.events[0].seq == 3
    records = await raw_items(make_settings(), "c#k")
    assert [(r["first"]["N"], r["count"]["N"]) for r in records] == [("3", "1")]


async def _all_seqs(settings: Settings, channel: str) -> list[int]:
    """Every event seq stored for the channel, from the raw items."""
    return [
        int(item["seq"]["N"]) + offset
        for item in await raw_items(settings, channel)
        for offset in range(len(item["events"]["L"]))
    ]


async def _purge(settings: Settings, channel: str) -> None:
    """Delete every item of the channel, oldest first (as the README says a purge must)."""
    keys = [int(item["seq"]["N"]) for item in await raw_items(settings, channel)]
    await delete_items(settings, channel, keys)


async def test_a_writer_whose_cached_end_was_purged_never_reuses_an_id(
    open_log: OpenLog, make_settings: Callable[..., Settings]
) -> None:
    async with open_log() as p1, open_log() as p2:
        acked = [e.event_id for v in (1, 2) for e in await _append(p1, "c", v)]  # p1 caches 2
        acked += [e.event_id for v in (3, 4, 5) for e in await _append(p2, "c", v)]
        await _purge(make_settings(), "c")
        (after,) = await _append(p1, "c", "after the purge")
    assert after.event_id not in acked  # today's main acknowledged <epoch>-3 again
    assert (after.seq, after.since) == (1, 1)  # the log started over: a new epoch
    assert parse_event_id(acked[0]) is not None
    assert after.epoch != parse_event_id(acked[0]).epoch  # type: ignore[union-attr]


async def test_a_stale_writer_after_a_purge_joins_the_new_epoch_instead_of_forking_the_log(
    open_log: OpenLog, make_settings: Callable[..., Settings]
) -> None:
    async with open_log() as p1, open_log() as p2:
        for v in range(6):
            await _append(p1, "c", v)  # p1 caches <old>-6
        await _purge(make_settings(), "c")
        new = [e for v in "abc" for e in await _append(p2, "c", v)]  # p2 opens epoch B at 1
        (late,) = await _append(p1, "c", "late")
        new += [late] + [e for v in "de" for e in await _append(p2, "c", v)]
        # Every event acknowledged since the purge is in one epoch, in order, once.
        assert [(e.epoch, e.seq) for e in new] == [(new[0].epoch, seq) for seq in range(1, 7)]
        page = await p1.read_after("c", 0)
        assert [e.event_id for e in page.events] == [e.event_id for e in new]


async def test_a_writer_with_a_cached_end_after_the_table_was_replaced_starts_a_new_epoch(
    open_log: OpenLog, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    async with open_log() as log:
        old = [e for v in range(3) for e in await _append(log, "c", v)]
        async with open_dynamodb(settings, local_session()) as client:
            await client.delete_table(TableName=settings.table_name)
            await ensure_table(client, settings.table_name)
        (after,) = await _append(log, "c", "x")
    assert (after.seq, after.since) == (1, 1) and after.epoch != old[0].epoch
    assert [int(item["seq"]["N"]) for item in await raw_items(settings, "c")] == [1]


async def test_an_epoch_opened_above_an_older_one_is_fingerprinted_by_its_half_retention(
    open_log: OpenLog,
) -> None:
    now = [1_000_000.0]
    epochs, opened_at = [], []
    async with open_log(clock=lambda: now[0], retention_seconds=600) as log:
        for _ in range(3):
            (event,) = await _append(log, "c", "x")
            epochs.append(event.epoch)
            opened_at.append(now[0])
            now[0] += 601  # expired: the next append opens an epoch above it
    # So a composite cursor's 12-bit fingerprint never confuses an older epoch of
    # the channel with the current one (gateway/composite.py, cursor.new_epoch).
    fingerprints = [int(epoch[:3], 16) for epoch in epochs]
    assert fingerprints[1:] == [int(at // 300) % 4096 for at in opened_at[1:]]
