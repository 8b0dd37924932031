"""What a client is told when a request fails: JSON naming the problem, and for a
server-side failure nothing of our internals.

A 4xx says what was wrong with the request, in the error's own words. A 5xx
carries a stable ``code``, a generic message and a ``request_id``; the details
(botocore's text, the DynamoDB endpoint, the table) go to the log under that
id, where an operator finds them and a client cannot.
"""

from __future__ import annotations

import logging
import uuid

from starlette.responses import JSONResponse

from gateway.errors import (
    GatewayError,
    RequestTimeout,
    StoreUnavailable,
    TooManyRequests,
    Unauthorized,
)

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
logger = logging.getLogger(__name__)

_SERVER_ERROR_MESSAGES = {
    "store_unavailable": "the event store is unavailable: try again shortly",
    "store_misconfigured": "the gateway cannot use its event store: its operator must check "
    "SSE_GATEWAY_TABLE_NAME and its permissions (its log says more)",
}
_UNSURE_PUBLISH = (
    ". The publish may or may not be stored: publish again with the same "
    f"{IDEMPOTENCY_KEY_HEADER} header to store it exactly once"
)


def error_response(status_code: int, code: str, message: str, **extra: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, **extra}}, status_code=status_code
    )


def answer_error(
    exc: GatewayError, method: str, path: str, *, too_many_retry_after: int
) -> JSONResponse:
    """The answer to a request that failed with ``exc``."""
    if exc.status_code < 500:
        response = error_response(exc.status_code, exc.code, exc.message)
    else:
        request_id = uuid.uuid4().hex[:16]
        logger.error(
            "%s %s answered %d %s (request id %s): %s",
            method,
            path,
            exc.status_code,
            exc.code,
            request_id,
            exc.message,
        )
        message = _SERVER_ERROR_MESSAGES.get(exc.code, "internal error")
        if isinstance(exc, StoreUnavailable) and method == "POST":
            message += _UNSURE_PUBLISH
        response = error_response(
            exc.status_code,
            exc.code,
            f"{message} (request id {request_id})",
            request_id=request_id,
        )
    if isinstance(exc, RequestTimeout):
        response.headers["Connection"] = "close"  # a client this slow is not kept
    if isinstance(exc, Unauthorized):
        response.headers["WWW-Authenticate"] = 'Bearer realm="sse-gateway"'
    if isinstance(exc, StoreUnavailable):
        response.headers["Retry-After"] = "1"
    if isinstance(exc, TooManyRequests):
        response.headers["Retry-After"] = str(too_many_retry_after)
    return response
