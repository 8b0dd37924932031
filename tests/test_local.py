"""The embedded DynamoDB: its transactions (infra/transactions.py) against moto's own,
and the garbage collector of its process.

Each case runs on two real servers through a real botocore client: the
embedded DynamoDB, whose transactions go through the layer, and moto's app
served bare, whose transactions are moto's own. Answers and tables must match.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from infra.local import moto_app, serve_wsgi
from infra.table import ATTRIBUTE_DEFINITIONS, KEY_SCHEMA
from infra.transactions import TransactionLayer

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

NOW = 1_000_000


class Recorder:
    """Passes every request on to moto, noting the operation of each: in front
    of the app the layer sends its single-item operations to."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app
        self.targets: list[str] = []

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        self.targets.append(environ.get("HTTP_X_AMZ_TARGET", "").rpartition(".")[2])
        return self.app(environ, start_response)


def run_threads(*targets: Callable[[], None]) -> None:
    """Run each on a thread of its own; raise what any of them raised."""
    with ThreadPoolExecutor(len(targets)) as pool:
        for future in [pool.submit(target) for target in targets]:
            future.result()


def client(url: str) -> Any:
    return boto3.client(
        "dynamodb",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(retries={"total_max_attempts": 1}, max_pool_connections=20),
    )


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder(moto_app("dynamodb"))


@pytest.fixture(scope="module")
def layered(recorder: Recorder) -> Iterator[Any]:
    """The embedded DynamoDB as infra.local.embedded_dynamodb builds it."""
    with serve_wsgi(TransactionLayer(moto_app(), items=recorder)) as url:
        yield client(url)


@pytest.fixture(scope="module")
def bare() -> Iterator[Any]:
    with serve_wsgi(moto_app()) as url:
        yield client(url)


def create_table(ddb: Any) -> str:
    """A fresh table of the gateway's schema on a server (all servers in this process
    share moto's state)."""
    name = f"events-{uuid.uuid4().hex[:12]}"
    ddb.create_table(
        TableName=name,
        KeySchema=KEY_SCHEMA,
        AttributeDefinitions=ATTRIBUTE_DEFINITIONS,
        BillingMode="PAY_PER_REQUEST",
    )
    return name


@pytest.fixture
def new_table() -> Callable[[Any], str]:
    return create_table


def batch(seq: int, wid: str, channel: str = "c") -> dict[str, Any]:
    return {"channel": {"S": channel}, "seq": {"N": str(seq)}, "wid": {"S": wid}}


def record(key: str, wid: str, expires_at: int) -> dict[str, Any]:
    return {
        "channel": {"S": f"c#{key}"},
        "seq": {"N": "0"},
        "wid": {"S": wid},
        "expires_at": {"N": str(expires_at)},
    }


def append(
    table: str, item: dict[str, Any], follows: tuple[int, str] | None, records: list[Any]
) -> list[dict[str, Any]]:
    """The transaction gateway/writes.py's transact_batch sends."""
    actions: list[dict[str, Any]] = [
        {
            "Put": {
                "TableName": table,
                "Item": item,
                "ConditionExpression": "attribute_not_exists(#s)",
                "ExpressionAttributeNames": {"#s": "seq"},
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }
    ]
    if follows is not None:
        key = {"channel": item["channel"], "seq": {"N": str(follows[0])}}
        check = {
            "TableName": table,
            "Key": key,
            "ConditionExpression": "#w = :w",
            "ExpressionAttributeNames": {"#w": "wid"},
            "ExpressionAttributeValues": {":w": {"S": follows[1]}},
        }
        actions.append({"ConditionCheck": check})
    for rec in records:
        put = {
            "TableName": table,
            "Item": rec,
            "ConditionExpression": "attribute_not_exists(#c) OR #e <= :now",
            "ExpressionAttributeNames": {"#c": "channel", "#e": "expires_at"},
            "ExpressionAttributeValues": {":now": {"N": str(NOW)}},
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        actions.append({"Put": put})
    return actions


def outcome(ddb: Any, actions: list[dict[str, Any]]) -> dict[str, Any]:
    """What botocore makes of the answer: the parsed body or the parsed error."""
    try:
        response = dict(ddb.transact_write_items(TransactItems=actions))
    except ClientError as exc:
        response = dict(exc.response)
    del response["ResponseMetadata"]
    return response


def contents(ddb: Any, table: str) -> list[dict[str, Any]]:
    items = ddb.scan(TableName=table, ConsistentRead=True)["Items"]
    return sorted(items, key=lambda i: (i["channel"]["S"], int(i["seq"]["N"])))


def gateway_case(name: str) -> tuple[list[dict[str, Any]], Callable[[str], list[Any]]]:
    """The items a case starts with, and its transaction for a table."""
    first = batch(1, "w1")
    taken = record("k1", "w0", NOW + 60)
    expired = record("k1", "w0", NOW - 60)
    cases: dict[str, tuple[list[Any], Callable[[str], list[Any]]]] = {
        "all pass": (
            [first, expired],
            lambda t: append(t, batch(2, "w2"), (1, "w1"), [record("k1", "w2", NOW + 60)]),
        ),
        "slot taken": ([first, batch(2, "w9")], lambda t: append(t, batch(2, "w2"), (1, "w1"), [])),
        "check item missing": ([], lambda t: append(t, batch(2, "w2"), (1, "w1"), [])),
        "check wid differs": (
            [batch(1, "w9")],
            lambda t: append(t, batch(2, "w2"), (1, "w1"), []),
        ),
        "record taken": (
            [first, taken],
            lambda t: append(t, batch(2, "w2"), (1, "w1"), [record("k1", "w2", NOW + 60)]),
        ),
        "several failing": (
            [batch(1, "w9"), batch(2, "w8"), taken],
            lambda t: append(
                t,
                batch(2, "w2"),
                (1, "w1"),
                [record("k1", "w2", NOW + 60), record("k2", "w2", NOW + 60)],
            ),
        ),
    }
    return cases[name]


GATEWAY_CASES = [
    "all pass",
    "slot taken",
    "check item missing",
    "check wid differs",
    "record taken",
    "several failing",
]


@pytest.mark.parametrize("case", GATEWAY_CASES)
def test_gateway_transactions_answer_and_apply_as_motos_own(
    layered: Any, bare: Any, new_table: Callable[[Any], str], case: str
) -> None:
    start, transaction = gateway_case(case)
    results = []
    for ddb in (layered, bare):
        table = new_table(ddb)
        for item in start:
            ddb.put_item(TableName=table, Item=item)
        results.append((outcome(ddb, transaction(table)), contents(ddb, table)))
    assert results[0] == results[1]
    answer, after = results[0]
    if case == "all pass":
        assert answer == {"ConsumedCapacity": [], "ItemCollectionMetrics": {}}
        assert len(after) == 3
    else:
        assert answer["Error"]["Code"] == "TransactionCanceledException"
        assert after == sorted(start, key=lambda i: (i["channel"]["S"], int(i["seq"]["N"])))


def test_every_failed_action_is_reported_with_the_item_it_met(
    layered: Any, new_table: Callable[[Any], str]
) -> None:
    start, transaction = gateway_case("several failing")
    table = new_table(layered)
    for item in start:
        layered.put_item(TableName=table, Item=item)
    answer = outcome(layered, transaction(table))
    assert answer["CancellationReasons"] == [
        {
            "Code": "ConditionalCheckFailed",
            "Message": "The conditional request failed",
            "Item": batch(2, "w8"),
        },
        # No ALL_OLD asked for on the check: its reason carries no item.
        {"Code": "ConditionalCheckFailed", "Message": "The conditional request failed"},
        {
            "Code": "ConditionalCheckFailed",
            "Message": "The conditional request failed",
            "Item": record("k1", "w0", NOW + 60),
        },
        {"Code": "None"},
    ]
    assert answer["Message"].endswith(
        "[ConditionalCheckFailed, ConditionalCheckFailed, ConditionalCheckFailed, None]"
    )


def other_actions(table: str) -> list[dict[str, Any]]:
    """Update and Delete, passing and failing, with a check on an absent item."""
    return [
        {
            "Update": {
                "TableName": table,
                "Key": {"channel": {"S": "u"}, "seq": {"N": "1"}},
                "UpdateExpression": "SET #n = :n",
                "ConditionExpression": "attribute_exists(#s)",
                "ExpressionAttributeNames": {"#n": "note", "#s": "seq"},
                "ExpressionAttributeValues": {":n": {"S": "new"}},
            }
        },
        {"Delete": {"TableName": table, "Key": {"channel": {"S": "d"}, "seq": {"N": "1"}}}},
        {
            "ConditionCheck": {
                "TableName": table,
                "Key": {"channel": {"S": "none"}, "seq": {"N": "1"}},
                "ConditionExpression": "attribute_not_exists(#s)",
                "ExpressionAttributeNames": {"#s": "seq"},
            }
        },
    ]


@pytest.mark.parametrize("fails", [False, True])
def test_update_delete_and_check_answer_and_apply_as_motos_own(
    layered: Any, bare: Any, new_table: Callable[[Any], str], fails: bool
) -> None:
    results = []
    for ddb in (layered, bare):
        table = new_table(ddb)
        ddb.put_item(TableName=table, Item=batch(1, "w", channel="u"))
        ddb.put_item(TableName=table, Item=batch(1, "w", channel="d"))
        actions = other_actions(table)
        if fails:
            actions[1]["Delete"] |= {
                "ConditionExpression": "#w = :w",
                "ExpressionAttributeNames": {"#w": "wid"},
                "ExpressionAttributeValues": {":w": {"S": "other"}},
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        results.append((outcome(ddb, actions), contents(ddb, table)))
    assert results[0] == results[1]
    answer, after = results[0]
    assert ("Error" in answer) is fails
    channels = [i["channel"]["S"] for i in after]
    assert channels == (["d", "u"] if fails else ["u"])  # the check's bare key is gone
    assert ("note" in after[-1]) is not fails


@pytest.mark.parametrize("invalid", ["too many", "one item twice", "missing table"])
def test_invalid_transactions_are_rejected_as_moto_rejects_them(
    layered: Any, bare: Any, new_table: Callable[[Any], str], invalid: str
) -> None:
    results = []
    for ddb in (layered, bare):
        table = new_table(ddb)
        if invalid == "too many":
            actions = [append(table, batch(n, "w"), None, [])[0] for n in range(101)]
        elif invalid == "one item twice":
            actions = append(table, batch(1, "w"), None, []) + other_actions(table)
            actions[1] = append(table, batch(1, "x"), None, [])[0]
        else:
            actions = append(table, batch(1, "w"), None, []) + append(
                "nope", batch(1, "w"), None, []
            )
        results.append((outcome(ddb, actions), contents(ddb, table)))
    assert results[0] == results[1]
    answer, after = results[0]
    code = "ResourceNotFoundException" if invalid == "missing table" else "ValidationException"
    assert answer["Error"]["Code"] == code
    assert after == []


def test_conflicting_concurrent_transactions_never_both_succeed(
    layered: Any, new_table: Callable[[Any], str]
) -> None:
    """Each of two writers puts its item only if the other's is absent: run one
    at a time, exactly one of them succeeds; interleaved, both could."""
    table = new_table(layered)
    rounds = 40
    wins = [[0, 0] for _ in range(rounds)]
    barrier = threading.Barrier(2)

    def writer(me: int) -> None:
        for n in range(rounds):
            mine, theirs = ("a", "b") if me == 0 else ("b", "a")
            check = {
                "TableName": table,
                "Key": {"channel": {"S": theirs}, "seq": {"N": str(n)}},
                "ConditionExpression": "attribute_not_exists(#s)",
                "ExpressionAttributeNames": {"#s": "seq"},
            }
            actions = append(table, batch(n, "w", channel=mine), None, [])
            actions.append({"ConditionCheck": check})
            barrier.wait()
            try:
                layered.transact_write_items(TransactItems=actions)
                wins[n][me] = 1
            except ClientError as exc:
                assert exc.response["Error"]["Code"] == "TransactionCanceledException"

    run_threads(lambda: writer(0), lambda: writer(1))
    assert [sum(w) for w in wins] == [1] * rounds
    assert len(contents(layered, table)) == rounds


def test_racing_appends_to_one_slot_have_one_winner(
    layered: Any, new_table: Callable[[Any], str]
) -> None:
    table = new_table(layered)
    layered.put_item(TableName=table, Item=batch(1, "w1"))
    won: list[str] = []
    barrier = threading.Barrier(6)

    def writer(wid: str) -> None:
        barrier.wait()
        try:
            actions = append(table, batch(2, wid), (1, "w1"), [record("k", wid, NOW + 60)])
            layered.transact_write_items(TransactItems=actions)
            won.append(wid)
        except ClientError as exc:
            reasons = exc.response["CancellationReasons"]
            assert reasons[0]["Item"]["wid"] == reasons[2]["Item"]["wid"] != {"S": wid}

    run_threads(*[lambda wid=f"w{n}": writer(wid) for n in range(2, 8)])
    assert len(won) == 1
    held = {i["channel"]["S"]: i["wid"]["S"] for i in contents(layered, table)}
    assert held == {"c": won[0], "c#k": won[0]}


def test_nothing_sees_a_cancelled_transactions_writes(
    layered: Any, new_table: Callable[[Any], str]
) -> None:
    """A transaction's tentative writes are undone before any other request
    runs: readers never see them, and writes to the table meanwhile (which
    moto's own deep copy crashes on) succeed."""
    table = new_table(layered)
    done = threading.Event()
    seen: list[Any] = []

    def cancelled_appends() -> None:
        try:
            for _ in range(60):
                # Its slot is free, but the item it follows is missing.
                actions = append(table, batch(2, "w2"), (1, "w1"), [record("k", "w2", NOW + 60)])
                with pytest.raises(ClientError, match="TransactionCanceledException"):
                    layered.transact_write_items(TransactItems=actions)
        finally:
            done.set()

    def reader() -> None:
        while not done.is_set():
            got = layered.get_item(TableName=table, Key={"channel": {"S": "c"}, "seq": {"N": "2"}})
            seen.extend([got["Item"]] if "Item" in got else [])

    def other_writes() -> None:
        n = 100
        while not done.is_set():
            layered.put_item(TableName=table, Item=batch(n, "x", channel="other"))
            n += 1

    run_threads(cancelled_appends, reader, other_writes)
    assert seen == []
    assert {i["channel"]["S"] for i in contents(layered, table)} == {"other"}


def test_requests_per_transaction_do_not_grow_with_the_table(
    layered: Any, recorder: Recorder, new_table: Callable[[Any], str]
) -> None:
    """One item operation per action, read by key: no scan, no query, none of
    moto's own transactions, whatever the table holds."""
    table = new_table(layered)
    layered.put_item(TableName=table, Item=batch(1, "w1"))
    requests = []
    seq = 1
    for size in (0, 500):
        while seq < size:
            seq += 1
            layered.put_item(TableName=table, Item=batch(seq, f"w{seq}"))
        for _ in range(2):
            seq += 1
            recorder.targets.clear()
            actions = append(
                table, batch(seq, f"w{seq}"), (seq - 1, f"w{seq - 1}"), [record(f"{seq}", "w", NOW)]
            )
            layered.transact_write_items(TransactItems=actions)
            requests.append(list(recorder.targets))
    # The table's key schema is read once; every transaction after that is the same.
    assert requests[0] == ["DescribeTable", "PutItem", "UpdateItem", "PutItem"]
    assert requests[1:] == [["PutItem", "UpdateItem", "PutItem"]] * 3
    assert len(contents(layered, table)) == seq + len(requests)  # each with its record


# Run in a process of its own, as ``python -m infra.local`` runs: what the
# collector walks there, after the store's items and requests.
COLLECTIONS_SCRIPT = """
import gc, json, sys, boto3
from infra.local import embedded_dynamodb, keep_collections_short
with embedded_dynamodb() as url:
    keep_collections_short(url)
    loaded = gc.get_freeze_count()
    walked_at_start = len(gc.get_objects())
    client = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id="local", aws_secret_access_key="local")
    client.create_table(TableName="t", KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
                        BillingMode="PAY_PER_REQUEST")
    for n in range(300):
        client.put_item(TableName="t", Item={"k": {"S": str(n)}, "v": {"S": "x" * n}})
    stored = len(gc.get_objects())
    gc.collect()
    print(json.dumps({"loaded": loaded, "walked_at_start": walked_at_start, "stored": stored,
                      "walked_after_full": len(gc.get_objects()),
                      "items": client.scan(TableName="t", Select="COUNT")["Count"]}))
"""


def test_the_embedded_dynamodb_process_freezes_what_survives_a_full_collection() -> None:
    """moto keeps every item as Python objects: without freezing, each full
    collection walked its modules, backends and every item stored so far."""
    run = subprocess.run(
        [sys.executable, "-c", COLLECTIONS_SCRIPT], capture_output=True, text=True, check=True
    )
    counts = json.loads(run.stdout)
    assert counts["loaded"] > 50_000  # moto's modules and the loaded DynamoDB backend
    assert counts["walked_at_start"] < 1_000
    assert counts["stored"] > 1_000  # the items, the client, what the requests left
    assert counts["walked_after_full"] < 100  # what survived is frozen too
    assert counts["items"] == 300  # and nothing stored was lost with it
