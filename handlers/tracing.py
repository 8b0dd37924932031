"""Each invocation's X-Ray trace header on the DynamoDB calls made for it.

Invariant: a DynamoDB request made on behalf of an invocation carries that
invocation's ``Lambda-Runtime-Trace-Id`` in ``X-Amzn-Trace-Id``, and never another
invocation's, however many run at once in the process.

AWS's runtimes put the header in the ``_X_AMZN_TRACE_ID`` variable for each
invocation, and botocore copies the variable into every request on Lambda
(``botocore.handlers.add_recursion_detection_header``; 1.40 reads nothing else, no
context variable). With many invocations in one process (Lambda Managed
Instances) one process-wide variable can name only one of them, so the trace id
lives in a context variable each worker sets for its invocation (asyncio copies it
into every task the invocation starts), and a ``before-call`` handler on the
client, botocore's public extension point, writes the header from it. A task that
serves no single invocation (a channel feed's shared tail loop) runs in a context
of its own (``gateway/hub.py``) and carries none. The environment is never
written: nothing else in this process reads the variable.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

TRACE_HEADER = "X-Amzn-Trace-Id"

trace_id: ContextVar[str | None] = ContextVar("sse_gateway_trace_id", default=None)


def add_trace_header(params: dict[str, Any], **_: Any) -> None:
    """botocore's ``before-call`` event: the current invocation's trace header, quoted
    as botocore quotes the variable's value."""
    current = trace_id.get()
    if current:
        params["headers"][TRACE_HEADER] = quote(current, safe="-=;:+&[]{}\"',")


def trace_calls(client: DynamoDBClient) -> None:
    """Every call of ``client`` carries the trace header of the invocation it serves."""
    client.meta.events.register("before-call.dynamodb", add_trace_header)
