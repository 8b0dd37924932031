"""sse-gateway: serverless-friendly Server-Sent Events over a gapless DynamoDB event log."""

from gateway.app import create_app
from gateway.errors import (
    GatewayError,
    InvalidInput,
    PayloadTooLarge,
    SettingsError,
    StoreMisconfigured,
    StoreUnavailable,
    UnsupportedMediaType,
)
from gateway.publisher import Publisher, open_publisher
from gateway.settings import Settings, load_settings
from gateway.store import EventLog, NewEvent, StoredEvent

__all__ = [
    "EventLog",
    "GatewayError",
    "InvalidInput",
    "NewEvent",
    "PayloadTooLarge",
    "Publisher",
    "Settings",
    "SettingsError",
    "StoreMisconfigured",
    "StoreUnavailable",
    "StoredEvent",
    "UnsupportedMediaType",
    "create_app",
    "load_settings",
    "open_publisher",
]
