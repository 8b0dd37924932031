"""A channel's history: the pure paging of ``gateway.history`` against a Query as
DynamoDB answers it, then ``GET /channels/{channel}/history`` over real HTTP on
uvicorn and moto's server: paging back across a whole channel, across an epoch
change and TTL deletion, history then subscribe, bad parameters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cursor import EMPTY, Position, parse_event_id
from gateway.errors import InvalidInput
from gateway.history import (
    DEFAULT_LIMIT,
    Bounds,
    HistoryPage,
    bounds,
    page,
    parse_before,
    parse_limit,
    parse_rewind,
)
from gateway.items import Batch, StoredEvent
from tests.browser_client import SECRET, bearer, mint
from tests.eventstream import read_session
from tests.servers import FaultProxy, GatewayServer, publish
from tests.tables import FAST_EXPIRY, delete_items, raw_items

StartGateway = Callable[..., GatewayServer]
NOW = 1_000_000.0


# -- the pure paging ------------------------------------------------------------


def _log(sizes: Sequence[int], epochs: Sequence[str], expired: int) -> list[Batch]:
    """Items of the given sizes, oldest first; item i of epoch ``epochs[i]`` (each
    epoch beginning where its first item does), the first ``expired`` expired."""
    batches, seq, since = [], 1, 1
    for index, (size, epoch) in enumerate(zip(sizes, epochs, strict=True)):
        if index and epoch != epochs[index - 1]:
            since = seq
        events = tuple(
            StoredEvent(epoch, seq + i, f'{{"n":{seq + i}}}', None, since) for i in range(size)
        )
        expires = NOW - 1 if index < expired else NOW + 100
        batches.append(Batch(events, int(expires), f"w{index}"))
        seq += size
    return batches


def _query(batches: Sequence[Batch], query: Bounds) -> tuple[list[Batch], bool]:
    """What a Query answers: items with key <= at_most, newest first, at most ``items``,
    and (as DynamoDB does) a LastEvaluatedKey whenever it stopped at its Limit."""
    found = [b for b in reversed(batches) if query.at_most is None or b.first <= query.at_most]
    return found[: query.items], len(found) >= query.items


def _read(batches: Sequence[Batch], before: Position | None, limit: int) -> HistoryPage:
    query = bounds(before, limit)
    if query is None:
        return HistoryPage([], None)
    items, more = _query(batches, query)
    return page(items, before, limit, more=more, now=NOW)


def _page_back(batches: Sequence[Batch], limit: int) -> tuple[list[StoredEvent], int]:
    events: list[StoredEvent] = []
    before, pages = None, 0
    while True:
        answer = _read(batches, before, limit)
        pages += 1
        assert len(answer.events) <= limit
        events[:0] = answer.events
        if answer.next_before is None:
            return events, pages
        assert answer.events, "a page pointing further back holds events"
        before = answer.next_before


@given(
    sizes=st.lists(st.integers(1, 5), min_size=0, max_size=25),
    change=st.integers(0, 25),
    expired=st.integers(0, 25),
    limit=st.integers(1, 12),
)
def test_paging_back_returns_every_retained_event_once_in_order(
    sizes: list[int], change: int, expired: int, limit: int
) -> None:
    epochs = ["00a00001" if i < change else "00b00002" for i in range(len(sizes))]
    batches = _log(sizes, epochs, min(expired, len(sizes)))
    retained = [e for b in batches if b.expires_at > NOW for e in b.events]
    events, pages = _page_back(batches, limit)
    assert events == retained
    # Each page but the last is full, and the last one says so by its next_before.
    assert pages <= max(1, -(-len(retained) // limit) + 1)


def test_a_page_ends_right_before_the_id_it_is_given_even_inside_a_batch() -> None:
    batches = _log([3, 4, 2], ["0a000001"] * 3, expired=0)  # seqs 1-3, 4-7, 8-9
    answer = _read(batches, Position("0a000001", 6), 3)
    assert [e.seq for e in answer.events] == [3, 4, 5]
    assert answer.next_before == Position("0a000001", 3)
    head = _read(batches, None, 4)
    assert [e.seq for e in head.events] == [6, 7, 8, 9]
    assert head.next_before == Position("0a000001", 6)


@pytest.mark.parametrize(
    "before",
    [
        Position("0b000009", 5),  # another epoch: the channel started over
        Position("0a000001", 99),  # beyond the head
        Position("0a000001", 2),  # expired
        Position("0a000001", 0),  # before the first event
        EMPTY,
    ],
)
def test_a_before_that_is_not_a_retained_position_gets_an_empty_last_page(
    before: Position,
) -> None:
    batches = _log([2, 2, 2], ["0a000001"] * 3, expired=1)
    assert _read(batches, before, 10) == HistoryPage([], None)


def test_the_page_body_carries_ids_types_and_the_published_json() -> None:
    events = [StoredEvent("0a000001", 4, '{"a":[1,2]}', "status"), StoredEvent("0a000001", 5, "7")]
    body = json.loads(HistoryPage(events, Position("0a000001", 4)).body())
    assert body == {
        "events": [
            {"id": "0a000001-4", "event": "status", "data": {"a": [1, 2]}},
            {"id": "0a000001-5", "event": None, "data": 7},
        ],
        "next_before": "0a000001-4",
    }


@pytest.mark.parametrize(
    ("parse", "text", "expected"),
    [
        (parse_limit, None, DEFAULT_LIMIT),
        (parse_limit, "1", 1),
        (parse_limit, "1000", 1000),
        (parse_rewind, None, 0),
        (parse_rewind, "0", 0),
        (parse_rewind, "1000", 1000),
        (parse_before, None, None),
        (parse_before, "0a1b2c3d-7", Position("0a1b2c3d", 7)),
    ],
)
def test_parameters_that_are_accepted(
    parse: Callable[[str | None], object], text: str | None, expected: object
) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("parse", "text", "code"),
    [
        (parse_limit, "0", "invalid_limit"),
        (parse_limit, "1001", "invalid_limit"),
        (parse_limit, "-1", "invalid_limit"),
        (parse_limit, "", "invalid_limit"),
        (parse_limit, "١٢", "invalid_limit"),  # digits, but not ASCII ones
        (parse_limit, "9" * 5000, "invalid_limit"),
        (parse_rewind, "1001", "invalid_rewind"),
        (parse_rewind, "ten", "invalid_rewind"),
        (parse_before, "7", "invalid_before"),
        (parse_before, "", "invalid_before"),
    ],
)
def test_parameters_that_are_refused_name_themselves(
    parse: Callable[[str | None], object], text: str, code: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse(text)
    assert refused.value.code == code
    assert refused.value.message.startswith(code.removeprefix("invalid_"))


# -- over HTTP ------------------------------------------------------------------


async def _history(
    http: httpx.AsyncClient, url: str, channel: str, **params: str | int
) -> dict[str, object]:
    response = await http.get(f"{url}/channels/{channel}/history", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, object] = response.json()
    return body


async def _all_pages(
    http: httpx.AsyncClient, url: str, channel: str, limit: int
) -> list[dict[str, object]]:
    events: list[dict[str, object]] = []
    params: dict[str, str | int] = {"limit": limit}
    while True:
        body = await _history(http, url, channel, **params)
        page_events = body["events"]
        assert isinstance(page_events, list) and len(page_events) <= limit
        events[:0] = page_events
        if body["next_before"] is None:
            return events
        params["before"] = str(body["next_before"])


def _epoch(event_id: str) -> str | None:
    position = parse_event_id(event_id)
    assert position is not None
    return position.epoch


async def test_paging_back_over_http_returns_the_channel_once_in_order(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway()
    published = []
    for n, size in enumerate([1, 3, 1, 5, 2, 1, 4]):
        body = {"events": [{"event": "e" if i % 2 else None, "data": [n, i]} for i in range(size)]}
        ids = await publish(http, server.url, "paged", body)
        published += [
            {"id": id_, "event": "e" if i % 2 else None, "data": [n, i]}
            for i, id_ in enumerate(ids)
        ]
    for limit in (1, 2, 4, 17, 1000):
        assert await _all_pages(http, server.url, "paged", limit) == published
    default = await _history(http, server.url, "paged")
    assert (default["events"], default["next_before"]) == (published, None)
    assert await _history(http, server.url, "never-published") == {
        "events": [],
        "next_before": None,
    }


async def test_history_across_an_epoch_change_and_ttl_deletion_of_the_oldest_items(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    brief = gateway(**FAST_EXPIRY)  # a writer whose events expire within the test
    old = [(await publish(http, brief.url, "c", {"data": n}))[0] for n in range(3)]
    await asyncio.sleep(2.1)  # all of them expired: the next append opens an epoch above
    server = gateway()
    new = []
    for n in range(8):
        new += await publish(http, server.url, "c", {"events": [{"data": n}, {"data": -n}]})
    assert len({_epoch(i) for i in old} | {_epoch(i) for i in new}) == 2

    assert [e["id"] for e in await _all_pages(http, server.url, "c", 3)] == new
    # A before of the expired epoch is no position to page back from.
    assert await _history(http, server.url, "c", before=old[-1]) == {
        "events": [],
        "next_before": None,
    }
    # TTL deletes the oldest items of the new epoch (and the expired ones).
    keys = [int(item["seq"]["N"]) for item in await raw_items(server.settings, "c")]
    await delete_items(server.settings, "c", keys[:5])
    survivors = [e["id"] for e in await _all_pages(http, server.url, "c", 3)]
    assert survivors == new[4:]
    assert await _history(http, server.url, "c", before=new[2]) == {
        "events": [],
        "next_before": None,
    }


async def test_history_then_subscribe_from_its_last_id_misses_nothing_published_meanwhile(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(max_session_seconds=30)
    before = [(await publish(http, server.url, "live", {"data": n}))[0] for n in range(25)]
    racing: list[str] = []

    async def publish_racing() -> None:
        for n in range(40):
            racing.extend(await publish(http, server.url, "live", {"data": 100 + n}))

    publishing = asyncio.create_task(publish_racing())
    await asyncio.sleep(0)  # the publishes race the page's history and its subscription
    shown = await _history(http, server.url, "live", limit=20)
    ids = [e["id"] for e in shown["events"]]
    await asyncio.sleep(0.05)
    session_task = asyncio.create_task(
        read_session(
            http,
            f"{server.url}/channels/live/events",
            params={"last_event_id": ids[-1]},
            stop=lambda events: any(e.data == "139" for e in events),  # the last racing one
        )
    )
    await publishing
    # Everything acknowledged is either on the page or in the stream after it, once.
    session = await asyncio.wait_for(session_task, 20)
    everything = before + racing
    followed = [e.last_event_id for e in session.events]
    assert ids + followed == everything[everything.index(ids[0]) :]
    assert len(ids) == 20 and followed  # the stream carried what came after the page


async def test_history_needs_a_subscribe_grant_for_the_channel(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(auth_secret=SECRET)
    await publish(http, server.url, "orders:1", {"data": 1}, **bearer(mint(publish=["orders:*"])))
    url = f"{server.url}/channels/orders:1/history"
    assert (await http.get(url)).status_code == 401
    denied = await http.get(url, headers=bearer(mint(subscribe=["orders:2"], publish=["orders:*"])))
    assert (denied.status_code, denied.json()["error"]["code"]) == (403, "forbidden")
    allowed = await http.get(url, headers=bearer(mint(subscribe=["orders:*"])))
    assert allowed.status_code == 200
    assert [e["data"] for e in allowed.json()["events"]] == [1]
    by_query = await http.get(url, params={"token": mint(subscribe=["orders:1"])})
    assert by_query.json() == allowed.json()


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"limit": "0"}, "invalid_limit"),
        ({"limit": "1001"}, "invalid_limit"),
        ({"limit": "many"}, "invalid_limit"),
        ({"before": "42"}, "invalid_before"),
        ({"before": "0a1b2c3d-1\n"}, "invalid_before"),
    ],
)
async def test_bad_parameters_get_a_400_naming_them_and_cost_no_store_call(
    gateway: StartGateway,
    http: httpx.AsyncClient,
    fault_proxy: FaultProxy,
    params: dict[str, str],
    code: str,
) -> None:
    server = gateway(dynamodb_endpoint_url=fault_proxy.url)
    await publish(http, server.url, "c", {"data": 1})
    queries = fault_proxy.seen.count("query")
    response = await http.get(f"{server.url}/channels/c/history", params=params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code
    assert code.removeprefix("invalid_") in error["message"]
    assert fault_proxy.seen.count("query") == queries
    invalid = await http.get(f"{server.url}/channels/a%20b/history")
    assert invalid.json()["error"]["code"] == "invalid_channel"


async def test_a_page_is_one_query(
    gateway: StartGateway, http: httpx.AsyncClient, fault_proxy: FaultProxy
) -> None:
    server = gateway(dynamodb_endpoint_url=fault_proxy.url)
    for n in range(30):
        await publish(http, server.url, "counted", {"events": [{"data": n}] * (1 + n % 3)})
    queries = fault_proxy.seen.count("query")
    pages = 0
    before: str | None = None
    while True:
        body = await _history(
            http, server.url, "counted", limit=7, **({"before": before} if before else {})
        )
        pages += 1
        if body["next_before"] is None:
            break
        before = str(body["next_before"])
    assert fault_proxy.seen.count("query") - queries == pages
