"""Query of one partition for the embedded DynamoDB, in time bounded by that partition.

Invariant: a Query this layer answers gets what moto's own Query answers for
the same state (the same items in the same order, Count, ScannedCount and
LastEvaluatedKey), and costs what the partition it names holds, not what the
table holds. A Query of any other shape, and every other request, is moto's.

Why a layer and not moto's: moto's Query on a table sorts every item of the
table, whatever the partition (``Table.all_items``, moto 5.2.5). A Query of a
one-item partition took 2.5 ms on an empty table and 105 ms beside 16,000 other
items (BENCHMARKS.md section 16), so a dev server, a test run or a benchmark
slowed down as its table grew, and every other request waited meanwhile on
moto's interpreter. DynamoDB's Query does not grow with the table. Through
this layer a tail poll beside 16,000 items takes 6.4 ms instead of 250
(section 17).

Mechanism: the shapes answered here are the ones the gateway sends: a
partition key equality, optionally with one sort key comparison (``=``, ``<``,
``<=``, ``>``, ``>=``), by placeholders that name the table's own keys with
values of the keys' types; ``ConsistentRead``, ``ScanIndexForward`` and
``Limit``. The partition is read from moto's backend and sorted as moto sorts
it; then moto's own loop runs over it: before each candidate it stops at the
``Limit`` or at 1 MB (``LastEvaluatedKey`` the last item taken), and takes the
candidate if it meets the sort key condition. Candidates that come before the
condition's range in that order are skipped by bisection: with nothing taken
yet, moto's loop takes none of them and cannot stop at one (``Limit`` is at
least 1, an item at most 400 KB). Whatever this layer does not read as such a
Query (an index, a filter, a projection, a start key, a missing table, names
that are not the keys, a key value moto rejects, a binary key, a table
without a sort key, a moto account header) goes on to moto, which answers it
or its error.
"""

from __future__ import annotations

import bisect
import io
import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from infra.transactions import CREDENTIAL, TARGET, answer

if TYPE_CHECKING:
    from collections.abc import Iterable
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

# Spaces only, and around AND: moto's tokenizer knows no other whitespace.
KEY_CONDITION = re.compile(r" *(#\w+) *= *(:\w+)(?: +(?i:and) +(#\w+) *(<=|>=|=|<|>) *(:\w+))? *")
ANSWERED_FIELDS = frozenset(
    [
        "TableName",
        "KeyConditionExpression",
        "ExpressionAttributeNames",
        "ExpressionAttributeValues",
        "ConsistentRead",
        "ScanIndexForward",
        "Limit",
    ]
)
RESULT_SIZE_LIMIT = 1_000_000  # moto's (DynamoDB's 1 MB)
# Tables keyed by these types only (with a sort key): moto keeps a binary key as
# bytes, which a value as sent (base64 text) neither finds nor compares with.
KEY_TYPES = frozenset(["S", "N"])


@dataclass(frozen=True, slots=True)
class PartitionQuery:
    """A Query of one partition, as sent: attribute names and typed values."""

    table: str
    partition_name: str
    partition_value: dict[str, Any]
    sort_name: str | None = None
    comparison: str | None = None
    bound: dict[str, Any] | None = None
    forward: bool = True
    limit: int | None = None


def parse_query(request: dict[str, Any]) -> PartitionQuery | None:
    """The request as a ``PartitionQuery``, or None if it is not of that shape."""
    if not set(request) <= ANSWERED_FIELDS or not isinstance(request.get("TableName"), str):
        return None
    match = KEY_CONDITION.fullmatch(str(request.get("KeyConditionExpression", "")))
    names = request.get("ExpressionAttributeNames", {})
    values = request.get("ExpressionAttributeValues", {})
    if match is None or not isinstance(names, dict) or not isinstance(values, dict):
        return None
    partition, partition_value, sort, comparison, bound = match.groups()
    if set(names) != {partition, sort} - {None} or set(values) != {partition_value, bound} - {None}:
        return None  # unused or missing placeholders: moto answers its error
    if not all(_is_key_value(value) for value in values.values()):
        return None  # moto answers its error (an empty key, a number that is none)
    forward = request.get("ScanIndexForward", True)
    limit = request.get("Limit")
    consistent = request.get("ConsistentRead", False)
    if not (isinstance(forward, bool) and isinstance(consistent, bool)):
        return None
    if limit is not None and (type(limit) is not int or limit < 1):
        return None
    return PartitionQuery(
        request["TableName"],
        names[partition],
        values[partition_value],
        names.get(sort),
        comparison,
        values.get(bound),
        forward,
        limit,
    )


def _is_key_value(value: object) -> bool:
    """A valid string or number key value, as sent."""
    if not isinstance(value, dict) or len(value) != 1:
        return False
    ((kind, text),) = value.items()
    if kind == "S":
        return isinstance(text, str) and text != ""
    try:
        return kind == "N" and isinstance(text, str) and Decimal(text).is_finite()
    except InvalidOperation:
        return False


def first_candidate(keys: list[Any], comparison: str | None, bound: Any, forward: bool) -> int:
    """Where, in moto's order over sort keys ``keys`` (ascending, reversed unless
    ``forward``), the items that can meet ``comparison`` with ``bound`` begin."""
    if comparison is None:
        return 0
    if forward:
        starts = {"=": bisect.bisect_left, ">=": bisect.bisect_left, ">": bisect.bisect_right}
        return starts[comparison](keys, bound) if comparison in starts else 0
    ends = {"=": bisect.bisect_right, "<=": bisect.bisect_right, "<": bisect.bisect_left}
    return len(keys) - ends[comparison](keys, bound) if comparison in ends else 0


def run_query(table: Any, query: PartitionQuery) -> dict[str, Any] | None:
    """What moto's Query answers for ``query`` on moto's ``table``, or None when the
    query does not fit the table (moto answers that)."""
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.utilities import dynamo_json_dump

    if (
        not {table.hash_key_type, table.range_key_type} <= KEY_TYPES
        or query.partition_name != table.hash_key_attr
        or [table.hash_key_type] != list(query.partition_value)
    ):
        return None
    bound = None
    if query.bound is not None:
        if query.sort_name != table.range_key_attr or [table.range_key_type] != list(query.bound):
            return None
        bound = DynamoType(query.bound)
    # A copy made under the GIL, as moto's own Query reads the live dict.
    partition = list(table.items.get(DynamoType(query.partition_value), {}).values())
    partition.sort(key=lambda item: item.range_key.cast_value)
    keys = [item.range_key.cast_value for item in partition]
    if not query.forward:
        partition.reverse()
    bound_key = None if bound is None else bound.cast_value
    start = first_candidate(keys, query.comparison, bound_key, query.forward)
    taken: list[Any] = []
    size = 0
    last_key = None
    for item in partition[start:]:
        if len(taken) == query.limit or size + item.size() > RESULT_SIZE_LIMIT:
            last_key = {table.hash_key_attr: taken[-1].hash_key}
            last_key[table.range_key_attr] = taken[-1].range_key
            break
        if bound is None or item.range_key.compare(query.comparison, [bound]):
            taken.append(item)
            size += item.size()
    result: dict[str, Any] = {
        "Count": len(taken),
        "ScannedCount": len(taken),
        "Items": [item.attrs for item in taken],
    }
    if last_key is not None:
        result["LastEvaluatedKey"] = last_key
    document: dict[str, Any] = json.loads(dynamo_json_dump(result))  # as moto encodes values
    return document


class PartitionQueries:
    """The WSGI app: ``app`` (moto's) with partition Queries answered as above.

    ``answered`` counts the Queries this layer answered itself."""

    def __init__(self, app: WSGIApplication) -> None:
        self._app = app
        self.answered = 0

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("HTTP_X_AMZ_TARGET") != TARGET + "Query":
            return self._app(environ, start_response)
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)  # for moto, if it is to answer
        result = self._answer(environ, body)
        if result is None:
            return self._app(environ, start_response)
        self.answered += 1
        response = answer("200 OK", result)
        start_response(response.status, response.headers)
        return [response.body]

    def _answer(self, environ: WSGIEnvironment, body: bytes) -> dict[str, Any] | None:
        from moto.dynamodb.models import dynamodb_backends
        from moto.iam.models import get_account_id_from

        credential = CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
        if credential is None or "HTTP_X_MOTO_ACCOUNT_ID" in environ:
            return None
        try:
            request = json.loads(body)
        except ValueError:
            return None
        query = parse_query(request) if isinstance(request, dict) else None
        if query is None:
            return None
        access_key, region = credential.groups()
        backend = dynamodb_backends[get_account_id_from(access_key)][region]
        table = backend.tables.get(query.table)
        return None if table is None else run_query(table, query)
