"""The one place that reads the environment.

Every knob is an ``SSE_GATEWAY_*`` variable; ``load_settings`` turns pydantic's
validation error into one that names the variable, so a typo in a deployment
fails at start with a message the operator can act on.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.errors import SettingsError

ENV_PREFIX = "SSE_GATEWAY_"

# DynamoDB caps an item at 400 KB and a transaction at 4 MB; an event's item
# also holds its key, id and bookkeeping attributes, so leave headroom.
MAX_ITEM_PAYLOAD_BYTES = 380_000
MAX_TRANSACTION_ITEMS = 100


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    table_name: str = Field("sse-gateway-events", min_length=3, max_length=255)
    dynamodb_endpoint_url: str | None = None
    dynamodb_region: str | None = None
    dynamodb_max_attempts: int = Field(5, ge=1, le=20)
    dynamodb_timeout_seconds: float = Field(5.0, gt=0, le=60)

    max_session_seconds: float = Field(600.0, gt=0, le=86_400)
    heartbeat_seconds: float = Field(15.0, gt=0)
    retry_ms: int = Field(1000, ge=0, le=3_600_000)
    retention_seconds: int = Field(86_400, gt=0)
    poll_min_seconds: float = Field(0.1, gt=0)
    poll_max_seconds: float = Field(1.0, gt=0)
    feed_buffer_events: int = Field(1000, ge=1)

    max_event_bytes: int = Field(65_536, ge=1, le=MAX_ITEM_PAYLOAD_BYTES)
    max_batch_events: int = Field(25, ge=1, le=MAX_TRANSACTION_ITEMS)
    max_request_bytes: int = Field(1_048_576, ge=1, le=3_500_000)

    demo_page: bool = False
    lambda_deadline_margin_seconds: float = Field(3.0, ge=0, le=60)

    @model_validator(mode="after")
    def _poll_bounds_ordered(self) -> Self:
        if self.poll_min_seconds > self.poll_max_seconds:
            raise ValueError(
                f"{ENV_PREFIX}POLL_MIN_SECONDS ({self.poll_min_seconds}) must not exceed "
                f"{ENV_PREFIX}POLL_MAX_SECONDS ({self.poll_max_seconds})"
            )
        return self


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with explicit ``overrides`` taking precedence."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            name = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
            problems.append(f"{name}: {error['msg']} (got {error.get('input')!r})")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from exc
