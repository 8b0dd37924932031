"""The package's exceptions: one base, a few kinds a caller can act on.

Each carries the HTTP status and the machine-readable code the API answers
with, so the HTTP layer translates errors without a lookup table of its own.
"""

from __future__ import annotations


class GatewayError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class SettingsError(GatewayError):
    code = "invalid_settings"


class InvalidInput(GatewayError):
    """The request (or the Python API call) is malformed; nothing was written."""

    status_code = 400
    code = "invalid_request"


class PayloadTooLarge(InvalidInput):
    status_code = 413
    code = "payload_too_large"


class IdempotencyKeyReused(InvalidInput):
    """An ``Idempotency-Key`` already stands for other events on this channel: 422."""

    status_code = 422
    code = "idempotency_key_reused"


class UnsupportedMediaType(InvalidInput):
    status_code = 415
    code = "unsupported_media_type"


class Unauthorized(GatewayError):
    """No valid token: 401, which also stops EventSource from reconnecting."""

    status_code = 401
    code = "unauthorized"


class Forbidden(GatewayError):
    """A valid token whose grants do not cover the channel: 403."""

    status_code = 403
    code = "forbidden"


class StoreUnavailable(GatewayError):
    """DynamoDB could not be reached or kept throttling after retries: try again later."""

    status_code = 503
    code = "store_unavailable"


class WriteConflict(StoreUnavailable):
    """A write met another transaction on its items and was cancelled, writing
    nothing (``TransactionConflict``): safe to repeat, which the appender does
    within its budget before answering ``StoreUnavailable``."""


class FeedLimitReached(GatewayError):
    """A process follows ``SSE_GATEWAY_MAX_FEEDS`` channels already: the session ends
    with ``retry:`` (and may land on another instance)."""


class ShuttingDown(GatewayError):
    """The server is stopping: its sessions end with ``retry:`` and their browsers
    reconnect (to another instance)."""


class LogRestarted(GatewayError):
    """A channel's log started over below a shared feed's position: its sessions end
    with ``retry:`` and their reconnects resolve against the new log."""


class StoreMisconfigured(GatewayError):
    """The table is missing or access is denied: an operator must fix the deployment."""

    status_code = 500
    code = "store_misconfigured"
