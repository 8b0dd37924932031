"""sse-gateway: serverless-friendly Server-Sent Events over a gapless DynamoDB event log."""

from gateway.app import create_app
from gateway.errors import (
    Forbidden,
    GatewayError,
    IdempotencyKeyReused,
    InvalidInput,
    PayloadTooLarge,
    SettingsError,
    StoreMisconfigured,
    StoreUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)
from gateway.items import NewEvent, StoredEvent
from gateway.publisher import Publisher, open_publisher
from gateway.settings import Settings, load_settings
from gateway.store import EventLog

__all__ = [
    "EventLog",
    "Forbidden",
    "GatewayError",
    "IdempotencyKeyReused",
    "InvalidInput",
    "NewEvent",
    "PayloadTooLarge",
    "Publisher",
    "Settings",
    "SettingsError",
    "StoreMisconfigured",
    "StoreUnavailable",
    "StoredEvent",
    "Unauthorized",
    "UnsupportedMediaType",
    "create_app",
    "load_settings",
    "open_publisher",
]
