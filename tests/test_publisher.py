from __future__ import annotations

import json
import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from gateway import (
    IdempotencyKeyReused,
    InvalidInput,
    PayloadTooLarge,
    Settings,
    open_publisher,
)
from gateway.store import EventLog
from infra.local import local_session
from tests.iam import iam_actions, record_publisher
from tests.servers import FaultProxy

DEPLOY_PAGE = Path(__file__).parent.parent / "docs" / "deploy-aws.md"


async def test_open_publisher_appends_through_the_python_api(
    make_settings: Callable[..., Settings],
    open_log: Callable[..., AbstractAsyncContextManager[EventLog]],
) -> None:
    async with open_log() as log:  # creates the table
        async with open_publisher(make_settings(), local_session()) as publisher:
            first = await publisher.publish("jobs:7", {"progress": 10})
            rest = await publisher.publish_many(
                "jobs:7", [{"data": {"progress": 50}}, {"event": "done", "data": None}]
            )
        page = await log.read_after("jobs:7", 0)
    assert [e.event_id for e in page.events] == [first, *rest]
    assert [(e.event, json.loads(e.data)) for e in page.events] == [
        (None, {"progress": 10}),
        (None, {"progress": 50}),
        ("done", None),
    ]


@pytest.mark.parametrize(
    ("channel", "events", "error"),
    [
        ("no spaces", [{"data": 1}], InvalidInput),
        ("c", [{"data": 1}, {"event": "bad\nname", "data": 2}], InvalidInput),
        ("c", [{"data": "x" * 70_000}], PayloadTooLarge),
        ("c", [{"data": i} for i in range(26)], InvalidInput),
        ("c", [{"event": "reset", "data": 1}], InvalidInput),
        ("c", [{"data": "\ud800"}], InvalidInput),
        ("c", [{"data": "x" * 60_000}] * 7, PayloadTooLarge),  # over one item's 400 KB
    ],
)
async def test_publish_many_validates_before_writing(
    make_settings: Callable[..., Settings],
    open_log: Callable[..., AbstractAsyncContextManager[EventLog]],
    channel: str,
    events: list[dict[str, object]],
    error: type[Exception],
) -> None:
    async with open_log() as log:
        async with open_publisher(make_settings(), local_session()) as publisher:
            with pytest.raises(error):
                await publisher.publish_many(channel, events)
        assert await log.last_batch("c") is None


async def test_publish_with_an_idempotency_key_returns_the_original_ids(
    make_settings: Callable[..., Settings],
    open_log: Callable[..., AbstractAsyncContextManager[EventLog]],
) -> None:
    async with open_log() as log:
        async with open_publisher(make_settings(), local_session()) as publisher:
            first = await publisher.publish("jobs:7", {"done": True}, idempotency_key="job-7-done")
            again = await publisher.publish("jobs:7", {"done": True}, idempotency_key="job-7-done")
            batch = await publisher.publish_many("jobs:7", [{"data": 1}], idempotency_key="b")
            assert (
                await publisher.publish_many("jobs:7", [{"data": 1}], idempotency_key="b") == batch
            )
            with pytest.raises(IdempotencyKeyReused):
                await publisher.publish("jobs:7", {"done": False}, idempotency_key="job-7-done")
            with pytest.raises(InvalidInput, match="Idempotency-Key"):
                await publisher.publish("jobs:7", 1, idempotency_key="")
        page = await log.read_after("jobs:7", 0)
    assert again == first
    assert [e.event_id for e in page.events] == [first, *batch]


async def test_the_documented_policy_for_open_publisher_grants_exactly_what_it_does(
    make_settings: Callable[..., Settings],
    open_log: Callable[..., AbstractAsyncContextManager[EventLog]],
    fault_proxy: FaultProxy,
) -> None:
    """What a user's own Lambda or service needs (moto enforces no IAM, AWS does)."""
    settings = make_settings()
    used = iam_actions(await record_publisher(fault_proxy, settings, open_log), settings.table_name)
    block = re.search(
        r"<!-- open_publisher IAM policy -->\n```json\n(.*?)```", DEPLOY_PAGE.read_text(), re.S
    )
    assert block is not None
    (statement,) = json.loads(block[1])["Statement"]
    assert statement["Effect"] == "Allow"
    assert set(statement["Action"]) == used
    assert re.fullmatch(
        r"arn:aws:dynamodb:<region>:<account>:table/<[A-Za-z]+>", statement["Resource"]
    )


async def test_history_through_the_python_api_is_the_http_answer(
    make_settings: Callable[..., Settings],
    open_log: Callable[..., AbstractAsyncContextManager[EventLog]],
) -> None:
    async with open_log(), open_publisher(make_settings(), local_session()) as publisher:
        ids = [await publisher.publish("feed:1", {"n": n}) for n in range(3)]
        ids += await publisher.publish_many(
            "feed:1", [{"event": "e", "data": [n]} for n in range(3)]
        )
        newest = await publisher.history("feed:1", limit=4)
        older = await publisher.history("feed:1", limit=4, before=newest["next_before"])
        with pytest.raises(InvalidInput, match="limit must be a whole number from 1 to 1000"):
            await publisher.history("feed:1", limit=0)
        with pytest.raises(InvalidInput, match="before must be an event id"):
            await publisher.history("feed:1", before="latest")
        with pytest.raises(InvalidInput, match="channel name"):
            await publisher.history("feed 1")
    assert newest == {
        "events": [{"id": ids[2], "event": None, "data": {"n": 2}}]
        + [{"id": ids[3 + n], "event": "e", "data": [n]} for n in range(3)],
        "next_before": ids[2],
    }
    assert older == {
        "events": [{"id": ids[n], "event": None, "data": {"n": n}} for n in range(2)],
        "next_before": None,
    }
