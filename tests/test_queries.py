"""The embedded DynamoDB's partition Queries (infra/queries.py) against moto's own.

Two real servers in this process share moto's state: one with the layer in front
of moto's app, one with moto's app bare. The same Query through a real botocore
client must get the same answer from both, and the layer must have answered it
itself (else the comparison would prove nothing).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.items import NewEvent
from gateway.store import EventLog
from infra.local import moto_app, serve_wsgi
from infra.queries import PartitionQueries
from infra.table import PARTITION_KEY, SORT_KEY
from infra.transactions import TransactionLayer
from tests.test_local import client, create_table

COMPARISONS = [None, "=", "<", "<=", ">", ">="]


@pytest.fixture(scope="module")
def layer() -> PartitionQueries:
    return PartitionQueries(moto_app())


@pytest.fixture(scope="module")
def layered_url(layer: PartitionQueries) -> Iterator[str]:
    """As infra.local.embedded_dynamodb composes it."""
    with serve_wsgi(TransactionLayer(layer, items=moto_app("dynamodb"))) as url:
        yield url


@pytest.fixture(scope="module")
def layered(layered_url: str) -> Any:
    return client(layered_url)


@pytest.fixture(scope="module")
def bare() -> Iterator[Any]:
    with serve_wsgi(moto_app()) as url:
        yield client(url)


@pytest.fixture(scope="module")
def table(bare: Any) -> str:
    """The gateway's table, with partitions the queries do not name beside theirs."""
    name = create_table(bare)
    for n in range(300):
        bare.put_item(
            TableName=name, Item={PARTITION_KEY: {"S": f"other-{n % 7}"}, SORT_KEY: {"N": str(n)}}
        )
    return name


def query(
    table: str, channel: str, comparison: str | None, bound: int, **fields: Any
) -> dict[str, Any]:
    request: dict[str, Any] = {
        "TableName": table,
        "KeyConditionExpression": "#c = :c",
        "ExpressionAttributeNames": {"#c": PARTITION_KEY},
        "ExpressionAttributeValues": {":c": {"S": channel}},
        **fields,
    }
    if comparison is not None:
        request["KeyConditionExpression"] += f" AND #s {comparison} :s"
        request["ExpressionAttributeNames"]["#s"] = SORT_KEY
        request["ExpressionAttributeValues"][":s"] = {"N": str(bound)}
    return request


def outcome(ddb: Any, request: dict[str, Any]) -> dict[str, Any]:
    """What a server answers, or the error it answers."""
    try:
        response = dict(ddb.query(**request))
    except ddb.exceptions.ClientError as exc:
        error: dict[str, Any] = exc.response["Error"]
        return error
    del response["ResponseMetadata"]
    return response


Compare = Callable[..., dict[str, Any]]


@pytest.fixture(scope="module")
def compare(layer: PartitionQueries, layered: Any, bare: Any) -> Compare:
    """``compare(request, by_layer=True)``: the outcome of ``request``, which both
    servers must answer alike, and which the layer must have answered itself
    (``by_layer``) or left to moto."""

    def same_outcome(request: dict[str, Any], by_layer: bool = True) -> dict[str, Any]:
        before = layer.answered
        ours, motos = outcome(layered, request), outcome(bare, request)
        assert ours == motos
        assert layer.answered == before + by_layer
        return ours

    return same_outcome


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seqs=st.sets(st.integers(0, 40), max_size=25),
    comparison=st.sampled_from(COMPARISONS),
    bound=st.integers(-1, 41),
    bound_is_a_seq=st.booleans(),
    forward=st.booleans(),
    limit=st.none() | st.integers(1, 30),
    consistent=st.booleans(),
)
# A bound on an existing key, each way a bisection off by one would drop it.
@example({1, 2, 3}, ">=", 2, False, True, None, False)
@example({1, 2, 3}, "=", 2, False, True, None, False)
@example({1, 2, 3}, "<=", 2, False, False, None, False)
@example({1, 2, 3}, "=", 2, False, False, None, False)
def test_partition_queries_answer_as_motos_own(
    compare: Compare,
    bare: Any,
    table: str,
    seqs: set[int],
    comparison: str | None,
    bound: int,
    bound_is_a_seq: bool,
    forward: bool,
    limit: int | None,
    consistent: bool,
) -> None:
    channel = f"c-{uuid.uuid4().hex[:8]}"
    for seq in seqs:  # moto keeps a partition in the order its items came: shuffled here
        item = {PARTITION_KEY: {"S": channel}, SORT_KEY: {"N": str(seq)}, "data": {"S": "x" * seq}}
        bare.put_item(TableName=table, Item=item)
    if bound_is_a_seq and seqs:  # where a bisection off by one would show
        bound = sorted(seqs)[bound % len(seqs)]
    fields: dict[str, Any] = {"ScanIndexForward": forward, "ConsistentRead": consistent}
    if limit is not None:
        fields["Limit"] = limit
    request = query(table, channel, comparison, bound, **fields)
    compare(request)


def test_a_page_stops_at_a_megabyte_as_motos_does(compare: Compare, bare: Any, table: str) -> None:
    """Four items of 250,000 bytes as moto counts them (names and values) fill a page
    of 1,000,000 exactly; one byte more in the fourth ends the page before it."""
    for extra, count in [(0, 4), (1, 3)]:
        channel = f"big-{uuid.uuid4().hex[:8]}"
        for seq in range(6):
            fill = 250_000 - len(PARTITION_KEY + channel + SORT_KEY + "data") - 1
            item = {
                PARTITION_KEY: {"S": channel},
                SORT_KEY: {"N": str(seq)},
                "data": {"S": "x" * (fill + (extra if seq == 3 else 0))},
            }
            bare.put_item(TableName=table, Item=item)
        request = query(table, channel, None, 0)
        answered = compare(request)
        assert answered["Count"] == count and "LastEvaluatedKey" in answered
    for comparison, bound, forward in [(">", 1, True), ("<=", 4, False)]:
        request = query(table, channel, comparison, bound, ScanIndexForward=forward)
        compare(request)


def test_values_of_every_type_come_back_as_moto_encodes_them(
    compare: Compare, bare: Any, table: str
) -> None:
    channel = f"types-{uuid.uuid4().hex[:8]}"
    item = {
        PARTITION_KEY: {"S": channel},
        SORT_KEY: {"N": "1"},
        "b": {"B": b"\x00\xff"},
        "m": {
            "M": {"l": {"L": [{"N": "1.5"}, {"BOOL": True}, {"NULL": True}]}, "ss": {"SS": ["a"]}}
        },
        "bs": {"BS": [b"\x01"]},
    }
    bare.put_item(TableName=table, Item=item)
    request = query(table, channel, None, 0)
    assert compare(request)["Items"] == [item]


@pytest.mark.parametrize(
    "change",
    [
        {"IndexName": "by-type"},
        {"FilterExpression": "attribute_exists(#c)"},
        {"ProjectionExpression": "#c"},
        {"Select": "COUNT"},
        {"ExclusiveStartKey": {PARTITION_KEY: {"S": "a"}, SORT_KEY: {"N": "1"}}},
        {"KeyConditionExpression": "#c = :c AND #c > :c"},
        {"ExpressionAttributeNames": {"#c": "data"}},  # not the partition key
        {"ExpressionAttributeValues": {":c": {"N": "1"}}},  # not its type
        {"ExpressionAttributeValues": {":c": {"S": "a"}, ":unused": {"S": "b"}}},
        {"ExpressionAttributeValues": {":c": {"S": ""}}},  # no key is empty
        {"ExpressionAttributeNames": {"#c": PARTITION_KEY, "#unused": "data"}},
        {"KeyConditionExpression": "#c\t=\t:c"},  # moto's tokenizer: spaces only
        {
            "KeyConditionExpression": "#c = :c\nAND #s > :s",
            "ExpressionAttributeNames": {"#c": PARTITION_KEY, "#s": SORT_KEY},
            "ExpressionAttributeValues": {":c": {"S": "other-1"}, ":s": {"N": "3"}},
        },
        {
            "KeyConditionExpression": "#c = :c AND #s > :s",
            "ExpressionAttributeNames": {"#c": PARTITION_KEY, "#s": SORT_KEY},
            "ExpressionAttributeValues": {":c": {"S": "other-1"}, ":s": {"N": "abc"}},
        },
        {"TableName": "no-such-table"},
    ],
)
def test_queries_of_any_other_shape_get_motos_own_answer(
    compare: Compare, table: str, change: dict[str, Any]
) -> None:
    compare({**query(table, "other-1", None, 0), **change}, by_layer=False)


KEY_VALUES = {"S": ["a", "b", "c"], "N": ["1", "2", "10"], "B": [b"\x00", b"\x02", b"\x01\xff"]}


@pytest.mark.parametrize("types", ["SN", "NN", "SS", "NS", "BN", "SB", "BB", "S", "N"])
def test_tables_of_other_key_types_are_answered_as_moto_answers(
    compare: Compare, bare: Any, types: str
) -> None:
    """String and number keys are the layer's to answer; a binary key (moto keeps
    it as bytes) and a table without a sort key are moto's."""
    keys = [("h", "HASH", types[0])] + ([("r", "RANGE", types[1])] if len(types) == 2 else [])
    name = f"keys-{uuid.uuid4().hex[:12]}"
    bare.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": key, "KeyType": kind} for key, kind, _ in keys],
        AttributeDefinitions=[{"AttributeName": key, "AttributeType": t} for key, _, t in keys],
        BillingMode="PAY_PER_REQUEST",
    )
    partition = {types[0]: KEY_VALUES[types[0]][1]}
    for n, value in enumerate(KEY_VALUES[types[-1]]):
        item = {"h": partition, "v": {"N": str(n)}}
        if len(types) == 2:
            item["r"] = {types[1]: value}
        bare.put_item(TableName=name, Item=item)
    requests = [
        {
            "TableName": name,
            "KeyConditionExpression": "#h = :h",
            "ExpressionAttributeNames": {"#h": "h"},
            "ExpressionAttributeValues": {":h": partition},
        }
    ]
    if len(types) == 2:
        requests.append(
            {
                "TableName": name,
                "KeyConditionExpression": "#h = :h AND #r > :r",
                "ExpressionAttributeNames": {"#h": "h", "#r": "r"},
                "ExpressionAttributeValues": {
                    ":h": partition,
                    ":r": {types[1]: KEY_VALUES[types[1]][0]},
                },
            }
        )
    ours = len(types) == 2 and "B" not in types
    counts = [3, 2] if len(types) == 2 else [1]  # without a sort key, one item per key
    for request, count in zip(requests, counts, strict=True):
        assert compare(request, by_layer=ours)["Count"] == count


async def test_every_query_the_event_log_makes_is_answered_by_the_layer(
    layer: PartitionQueries,
    layered_url: str,
    open_log: Callable[..., AbstractAsyncContextManager[EventLog]],
) -> None:
    async with open_log(dynamodb_endpoint_url=layered_url) as log:
        for n in range(5):
            await log.append("c", [NewEvent(data=str(n)), NewEvent(data=str(-n))])
        queries, before = log.stats.queries, layer.answered
        page = await log.read_after("c", 3, aligned=False)  # inside a batch: two queries
        assert [event.seq for event in page.events] == list(range(4, 11))
        assert await log.last_batch("c") is not None
        history = await log.history("c", None, 4)
        assert [event.seq for event in history.events] == [7, 8, 9, 10]
    assert log.stats.queries - queries == 4
    assert layer.answered - before == 4


def test_a_query_for_another_moto_account_is_motos(
    layer: PartitionQueries, layered_url: str, table: str
) -> None:
    """moto's account header names another account, which has no such table."""
    ddb = client(layered_url)

    def other_account(request: Any, **_: Any) -> None:
        request.headers["x-moto-account-id"] = "111111111111"

    ddb.meta.events.register("before-sign.dynamodb.Query", other_account)
    before = layer.answered
    with pytest.raises(ddb.exceptions.ResourceNotFoundException):
        ddb.query(**query(table, "other-1", None, 0))
    assert layer.answered == before
