"""TransactWriteItems for the embedded DynamoDB, in time bounded by its actions.

Invariant: a transaction costs a bounded number of single-item operations
whatever the size of its tables (one per action, one more per applied action
when it is cancelled), it is all or nothing, and no other request runs while
it does, so nothing observes or interleaves with its tentative writes. It
answers what moto's own implementation answers (botocore parses both the
same): the same success body; on a failed condition a
``TransactionCanceledException`` with one reason per action, in order, every
failed one reported, with its ``ALL_OLD`` item if asked for; the same
``ValidationException`` for more than 100 actions or two on one item.

Why a layer and not moto's: moto's ``transact_write_items`` deep-copies every
table the transaction touches, so it can roll back, before it does anything:
a gateway append took 13 ms on an empty table, 182 ms at 1000 items, 262 ms
at 2000 (BENCHMARKS.md §7), and the copy crashes with ``RuntimeError:
dictionary changed size during iteration`` when another thread writes the
table meanwhile.

Mechanism, as a WSGI layer in front of moto's app: under an exclusive gate
(every other request holds it shared), apply each action through moto's own
single-item operation with its condition: Put, Update and Delete as they are;
a ConditionCheck as an UpdateItem of no attributes, which changes nothing (it
creates the bare key when the item is absent: deleted at once). Each asks for
ALL_OLD, so the operation that writes also returns the item as it was, the
snapshot (a GetItem first would double moto's per-request cost), and the item
that failed a condition. If any condition failed, every applied action's item
is put back as it was. What this layer cannot read as a well-formed
transaction, or an action failing for another reason than its condition (a
missing table, a bad expression), goes to moto's own implementation, with the
state as it was, which answers its error.
"""

from __future__ import annotations

import io
import json
import re
import threading
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

TARGET = "DynamoDB_20120810."
ERROR_TYPE = "com.amazonaws.dynamodb.v20120810#"
MAX_ACTIONS = 100
CONDITION_FAILED = "The conditional request failed"
# What an action passes on to its single-item operation as it is.
PASSED_ON = (
    "TableName",
    "ConditionExpression",
    "ExpressionAttributeNames",
    "ExpressionAttributeValues",
)
# Requests that cannot change a table's key schema: any other one (CreateTable,
# DeleteTable, a restore, moto's reset, ...) forgets the cached schemas.
KEEPS_SCHEMAS = frozenset(
    TARGET + name
    for name in [
        "GetItem",
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "Query",
        "Scan",
        "BatchGetItem",
        "BatchWriteItem",
        "TransactGetItems",
        "DescribeTable",
        "DescribeTimeToLive",
        "ListTables",
    ]
)
CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/[^/]+/([^/]+)/")


class Gate:
    """Any number of plain requests at once, or one transaction alone.

    A waiting transaction holds new plain requests back, so a steady stream of
    them cannot starve it.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._exclusive and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            with self._condition:
                self._shared -= 1
                self._condition.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._condition:
            self._waiting += 1
            self._condition.wait_for(lambda: not self._exclusive and not self._shared)
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._condition:
                self._exclusive = False
                self._condition.notify_all()


@dataclass(frozen=True, slots=True)
class Answer:
    status: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def ok(self) -> bool:
        return self.status.startswith("200")

    @property
    def error_code(self) -> str:
        type_: str = json.loads(self.body).get("__type", "")
        return type_.rpartition("#")[2]


def answer(status: str, document: dict[str, Any], error: str | None = None) -> Answer:
    """An answer framed as moto frames its own (botocore checks the CRC32)."""
    body = json.dumps(document).encode()
    headers = [
        ("Content-Type", "application/json" if error else "application/x-amz-json-1.0"),
        ("x-amz-crc32", str(zlib.crc32(body))),
        ("Content-Length", str(len(body))),
    ]
    if error:
        headers.append(("X-Amzn-ErrorType", error))
    return Answer(status, headers, body)


def validation_error(message: str) -> Answer:
    return answer(
        "400 Bad Request",
        {"__type": ERROR_TYPE + "ValidationException", "message": message},
        "ValidationException",
    )


@dataclass(slots=True)
class Action:
    """One action of a transaction: its kind, its request, the key it touches."""

    kind: str
    request: dict[str, Any]
    key: dict[str, Any]
    before: dict[str, Any] | None = None  # the item as it was, None when absent
    applied: bool = False
    reason: dict[str, Any] = field(default_factory=lambda: {"Code": "None"})


class TransactionLayer:
    """The WSGI app: moto's ``app`` with TransactWriteItems served as above.

    The single-item operations go to ``items`` (``app`` by default): moto's
    DynamoDB app itself skips the service lookup moto's dispatcher makes per
    request, 40 % of what a small request costs.
    """

    def __init__(self, app: WSGIApplication, items: WSGIApplication | None = None) -> None:
        self._app = app
        self._items = items or app
        self._gate = Gate()
        # A table's key schema never changes while it exists; see KEEPS_SCHEMAS.
        self._schemas: dict[tuple[str, ...], list[str]] = {}

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target != TARGET + "TransactWriteItems":
            with self._gate.shared():  # moto's answer is complete when its app returns
                response = self._app(environ, start_response)
                if target not in KEEPS_SCHEMAS:
                    self._schemas.clear()
                return response
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        with self._gate.exclusive():
            result = self._transact(environ, body)
        start_response(result.status, result.headers)
        return [result.body]

    def _transact(self, environ: WSGIEnvironment, body: bytes) -> Answer:
        try:
            items = json.loads(body)["TransactItems"]
        except (ValueError, KeyError, TypeError):
            items = None
        if not isinstance(items, list):
            return self._call(environ, "TransactWriteItems", body)
        if len(items) > MAX_ACTIONS:
            return validation_error(
                "1 validation error detected at 'transactItems' failed to satisfy constraint: "
                "Member must have length less than or equal to 100."
            )
        actions = self._actions(environ, items)
        if actions is None:
            return self._call(environ, "TransactWriteItems", body)
        touched = {json.dumps([a.request["TableName"], a.key], sort_keys=True) for a in actions}
        if len(touched) < len(actions):
            return validation_error(
                "Transaction request cannot include multiple operations on one item"
            )
        try:
            well_formed = all(self._apply(environ, action) for action in actions)
        except BaseException:
            self._restore(environ, actions)
            raise
        if not well_formed:
            self._restore(environ, actions)
            return self._call(environ, "TransactWriteItems", body)
        failed = [a.reason["Code"] for a in actions]
        if all(code == "None" for code in failed):
            return answer("200 OK", {"ConsumedCapacity": [], "ItemCollectionMetrics": {}})
        self._restore(environ, actions)
        message = (
            "Transaction cancelled, please refer cancellation reasons for specific reasons "
            f"[{', '.join(failed)}]"
        )
        document = {
            "__type": ERROR_TYPE + "TransactionCanceledException",
            "CancellationReasons": [a.reason for a in actions],
            "Message": message,
        }
        return answer("400 Bad Request", document, "TransactionCanceledException")

    def _actions(self, environ: WSGIEnvironment, items: list[Any]) -> list[Action] | None:
        """The actions with their keys; None when the request is not well formed."""
        actions = []
        for item in items:
            if not isinstance(item, dict) or len(item) != 1:
                return None
            ((kind, request),) = item.items()
            if kind not in ("Put", "Update", "Delete", "ConditionCheck"):
                return None
            if not isinstance(request, dict) or "TableName" not in request:
                return None
            if kind != "Put":
                if "Key" not in request:
                    return None
                actions.append(Action(kind, request, request["Key"]))
                continue
            schema = self._schema(environ, request["TableName"])
            if schema is None or any(name not in request.get("Item", {}) for name in schema):
                return None
            actions.append(Action(kind, request, {k: request["Item"][k] for k in schema}))
        return actions

    def _schema(self, environ: WSGIEnvironment, table: str) -> list[str] | None:
        match = CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
        cache_key = (*(match.groups() if match else ()), table)
        if cache_key not in self._schemas:
            described = self._call(environ, "DescribeTable", {"TableName": table})
            if not described.ok:
                return None
            schema = json.loads(described.body)["Table"]["KeySchema"]
            self._schemas[cache_key] = [key["AttributeName"] for key in schema]
        return self._schemas[cache_key]

    def _apply(self, environ: WSGIEnvironment, action: Action) -> bool:
        """Apply one action, keeping the item as it was and the action's reason;
        False when it failed for another reason than its condition."""
        request = action.request
        sent: dict[str, Any] = {name: request[name] for name in PASSED_ON if name in request}
        # ALL_OLD both ways: each write returns the item as it was, whatever happens.
        sent |= {"ReturnValues": "ALL_OLD", "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}
        if action.kind == "Put":
            done = self._call(environ, "PutItem", {**sent, "Item": request["Item"]})
        elif action.kind == "Delete":
            done = self._call(environ, "DeleteItem", {**sent, "Key": action.key})
        elif action.kind == "Update":
            update = {"Key": action.key, "UpdateExpression": request.get("UpdateExpression")}
            done = self._call(environ, "UpdateItem", {**sent, **update})
        else:
            # An update of no attributes changes nothing, but creates the bare key
            # when the item is absent: deleted below.
            check = {"Key": action.key, "AttributeUpdates": {}}
            done = self._call(environ, "UpdateItem", {**sent, **check})
        document = json.loads(done.body)
        if done.ok:
            action.before = document.get("Attributes") or None
            action.applied = action.kind != "ConditionCheck"
            if action.kind == "ConditionCheck" and action.before is None:
                self._put_back(environ, action)
            return True
        if done.error_code != "ConditionalCheckFailedException":
            return False
        action.reason = {"Code": "ConditionalCheckFailed", "Message": CONDITION_FAILED}
        held = document.get("Item")
        if held and request.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD":
            action.reason["Item"] = held
        return True

    def _restore(self, environ: WSGIEnvironment, actions: list[Action]) -> None:
        for action in reversed(actions):
            if action.applied:
                self._put_back(environ, action)

    def _put_back(self, environ: WSGIEnvironment, action: Action) -> None:
        table = action.request["TableName"]
        if action.before is None:
            self._call(environ, "DeleteItem", {"TableName": table, "Key": action.key})
        else:
            self._call(environ, "PutItem", {"TableName": table, "Item": action.before})

    def _call(
        self,
        environ: WSGIEnvironment,
        operation: str,
        payload: dict[str, Any] | bytes,
    ) -> Answer:
        """One request to moto, as the client's own request with another body."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        sub = dict(environ)
        sub.update(
            {
                "HTTP_X_AMZ_TARGET": TARGET + operation,
                "CONTENT_LENGTH": str(len(body)),
                "wsgi.input": io.BytesIO(body),
            }
        )
        started: list[tuple[str, list[tuple[str, str]]]] = []

        def start_response(status: str, headers: list[tuple[str, str]], *_: Any) -> Any:
            started.append((status, headers))
            return lambda _data: None

        chunks = self._items(sub, start_response)
        try:
            data = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        status, headers = started[0]
        return Answer(status, list(headers), data)
