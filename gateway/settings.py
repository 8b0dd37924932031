"""The one place that reads the environment.

Every knob is an ``SSE_GATEWAY_*`` variable; ``load_settings`` turns pydantic's
validation error into one that names the variable, and an ``SSE_GATEWAY_*``
variable that is no setting stops the start too, naming the closest setting: a
typo in a deployment fails at start with a message the operator can act on,
rather than leaving a default silently in force.

No error prints a secret: pydantic's errors carry the input (a model-level
error all of it), so ``load_settings`` shows the input only of fields that are
not ``SecretStr``, never chains pydantic's error (a traceback would print it),
and keys are checked here, at start, rather than at the first token. A
secret kept in AWS (``AUTH_SECRET_ARN``) is fetched by ``load_settings``, once
per start (``gateway/keys.py``).
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from gateway.errors import SettingsError
from gateway.keys import check_public_key, check_secret_length, fetch_secret

ENV_PREFIX = "SSE_GATEWAY_"
# Set by Lambda for a runtime, not by an operator: read under their own names.
RUNTIME_API_VARIABLE = "AWS_LAMBDA_RUNTIME_API"
# A Secrets Manager secret's or an SSM parameter's ARN: what fetch_secret reads.
SECRET_ARN_PATTERN = (
    r"^arn:aws[a-z-]*:(secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:"
    r"|ssm:[a-z0-9-]+:[0-9]{12}:parameter/).+$"
)
MAX_CONCURRENCY_VARIABLE = "AWS_LAMBDA_MAX_CONCURRENCY"
FUNCTION_NAME_VARIABLE = "AWS_LAMBDA_FUNCTION_NAME"

# DynamoDB caps an item at 400 KB, and one publish is one item (all of its
# events); the item also holds its key and bookkeeping attributes, so leave
# headroom. A batch stays within what one response lists comfortably.
MAX_ITEM_PAYLOAD_BYTES = 380_000
MAX_BATCH_EVENTS = 100


def variable_names(settings_cls: type[BaseSettings]) -> dict[str, str]:
    """Each setting's variable, by field name: ``SSE_GATEWAY_<NAME>``, or the name it is
    read under (an alias, for what Lambda sets)."""
    return {
        name: field.validation_alias
        if isinstance(field.validation_alias, str)
        else f"{ENV_PREFIX}{name.upper()}"
        for name, field in settings_cls.model_fields.items()
    }


class _StrictEnvSource(EnvSettingsSource):
    """The environment, refusing ``SSE_GATEWAY_*`` variables that are no setting:
    pydantic-settings ignores them, so a misspelt one would leave its default in
    force without a word."""

    def __call__(self) -> dict[str, Any]:
        fields = {variable: name for name, variable in variable_names(self.settings_cls).items()}
        unknown = sorted(
            variable.upper()
            for variable in self.env_vars
            if variable.upper().startswith(ENV_PREFIX) and variable.upper() not in fields
        )
        problems = []
        for variable in unknown:
            # Among every setting's variable: SSE_GATEWAY_LAMBDA_RUNTIME_API is told
            # that Lambda's own AWS_LAMBDA_RUNTIME_API is the one read.
            (closest,) = difflib.get_close_matches(variable, fields, n=1, cutoff=0)
            description = self.settings_cls.model_fields[fields[closest]].description
            problems.append(f"{variable} is not a setting; the closest is {closest}: {description}")
        if problems:
            raise SettingsError("invalid settings: " + "; ".join(problems))
        return super().__call__()


class Settings(BaseSettings):
    """Every knob of the gateway. Each field is the variable ``SSE_GATEWAY_<NAME>``
    (or, for what Lambda sets, its own name); docs/settings.md lists them
    with their defaults, and a test keeps the two equal."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    table_name: str = Field(
        "sse-gateway-events", min_length=3, max_length=255, description="the DynamoDB table"
    )
    dynamodb_endpoint_url: str | None = Field(
        None, description="another DynamoDB, such as moto or DynamoDB Local; unset: AWS"
    )
    dynamodb_region: str | None = Field(
        None, description="region of the table; unset: from the AWS environment"
    )
    dynamodb_max_attempts: int = Field(
        5, ge=1, le=20, description="attempts per DynamoDB request, with backoff and jitter"
    )
    dynamodb_timeout_seconds: float = Field(
        5.0, gt=0, le=60, description="connect and read timeout per DynamoDB attempt"
    )

    max_session_seconds: float = Field(
        600.0, gt=0, le=86_400, description="a session ends itself with retry: after this long"
    )
    heartbeat_seconds: float = Field(
        15.0, gt=0, description="a comment line after this long without output"
    )
    retry_ms: int = Field(
        1000, ge=0, le=3_600_000, description="the retry: sent when a session ends"
    )
    retention_seconds: int = Field(
        86_400, gt=0, description="how long events and idempotency keys stay resumable"
    )
    poll_min_seconds: float = Field(0.1, gt=0, description="poll interval right after activity")
    poll_max_seconds: float = Field(1.0, gt=0, description="poll interval when idle")
    feed_buffer_events: int = Field(
        1000, ge=1, description="recent events one channel feed keeps in memory"
    )
    feed_buffer_bytes: int = Field(
        8_388_608, ge=65_536, description="bytes of recent events one channel feed keeps"
    )
    notify_url: SecretStr | None = Field(
        None,
        description="redis:// or rediss:// URL (with user and password or token) of a Redis or "
        "Valkey whose pub/sub wakes other processes' feeds; unset: polling only",
    )
    notify_url_arn: str | None = Field(
        None,
        pattern=SECRET_ARN_PATTERN,
        description="the notify URL from AWS instead: a Secrets Manager secret's ARN (its "
        "SecretString) or an SSM SecureString parameter's ARN, read once at start",
    )
    notified_poll_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="while notifications flow, a channel's safety poll: a lost notification, "
        "a writer without the notifier, a purge or TTL is seen within this",
    )
    max_feeds: int = Field(
        10_000,
        ge=1,
        description="channel feeds one process runs at most; a session beyond it ends with retry:",
    )
    max_feeds_per_subject: int = Field(
        256,
        ge=1,
        description="channel feeds one subject (a token's sub; the client address without "
        "auth) may start and hold alone; beyond it: 429 too_many_feeds",
    )
    max_sessions_per_subject: int = Field(
        256, ge=1, description="open sessions one subject may hold; beyond it: 429"
    )
    overload_retry_ms: int = Field(
        15_000,
        ge=0,
        le=3_600_000,
        description="a session ended by a limit or a store error sends a retry: drawn from "
        "[half this, this]",
    )
    max_channels_per_connection: int = Field(
        16, ge=1, le=64, description="channels one /events connection may name"
    )
    idle_session_seconds: float | None = Field(
        None,
        gt=0,
        description="a session that delivered nothing for this long ends with retry: "
        "IDLE_RETRY_MS; unset: off",
    )
    idle_retry_ms: int = Field(
        60_000, ge=0, le=3_600_000, description="the retry: an idle session ends with"
    )
    session_jitter: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="sessions last a random length in [(1 - j) x max, max], so clients that "
        "connected together do not reconnect together",
    )

    max_event_bytes: int = Field(
        65_536,
        ge=1,
        le=MAX_ITEM_PAYLOAD_BYTES,
        description="largest event data, as JSON text",
    )
    max_batch_events: int = Field(
        25, ge=1, le=MAX_BATCH_EVENTS, description="most events in one publish"
    )
    max_request_bytes: int = Field(
        1_048_576, ge=1, le=3_500_000, description="largest publish request body"
    )

    max_header_bytes: int = Field(
        32_768,
        ge=1024,
        le=1_048_576,
        description="on serve, the longest request line and headers; beyond: 431",
    )
    header_timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="on serve, the time a client has to send a request head"
    )
    body_timeout_seconds: float = Field(
        20.0, gt=0, le=300, description="the time a publish has to send its whole body; beyond: 408"
    )
    # Longer than a client pool's idle expiry (httpx: 5 s) and a load balancer's idle
    # timeout (ALB: 60 s): the side that closes an idle connection should be the one
    # that would reuse it. A server closing it can meet a request in flight, which
    # then fails with a reset that the client cannot safely retry (a POST).
    keep_alive_seconds: int = Field(
        75, ge=1, le=300, description="on serve, an idle keep-alive connection closes after this"
    )
    max_connections: int = Field(
        10_000,
        ge=1,
        description="on serve, open connections at most (idle streams included); "
        "beyond, a new one is closed at once",
    )

    auth_secret: SecretStr | None = Field(
        None, description="HS256 secret for JWT channel grants, 32+ characters; unset: auth off"
    )
    auth_secret_arn: str | None = Field(
        None,
        pattern=SECRET_ARN_PATTERN,
        description="the HS256 secret from AWS instead: a Secrets Manager secret's ARN "
        "(its SecretString) or an SSM SecureString parameter's ARN, read once at start",
    )
    auth_public_key: str | None = Field(
        None, description="PEM public key for RS256/ES256 tokens instead of the secret"
    )
    auth_algorithm: Literal["HS256", "RS256", "ES256"] = Field(
        "HS256", description="the one accepted token algorithm"
    )
    auth_leeway_seconds: float = Field(
        10.0, ge=0, le=300, description="clock skew allowed on exp and nbf"
    )
    auth_audience: str | None = Field(
        None, min_length=1, description="when set, a token must carry this aud"
    )
    auth_issuer: str | None = Field(
        None, min_length=1, description="when set, a token must carry this iss"
    )
    cors_allowed_origins: Annotated[list[str], NoDecode] = Field(
        [], description="comma-separated origins for the app's CORS middleware; unset: CORS off"
    )

    demo_page: bool = Field(False, description="serve the demo page at /")
    metrics: bool = Field(
        False,
        description="report metrics: GET /metrics for Prometheus in a container, "
        "CloudWatch EMF lines on Lambda",
    )
    lambda_deadline_margin_seconds: float = Field(
        3.0,
        ge=0,
        le=60,
        description="on Lambda, end a session or answer a publish this long before the deadline",
    )
    lambda_runtime_api: str | None = Field(
        None,
        validation_alias=RUNTIME_API_VARIABLE,
        description="set by Lambda: the Runtime API the subscribe function's loop serves",
    )
    lambda_max_concurrency: int = Field(
        1,
        ge=1,
        le=1600,
        validation_alias=MAX_CONCURRENCY_VARIABLE,
        description="set by Lambda Managed Instances: invocations one execution environment "
        "serves at once",
    )
    lambda_function_name: str | None = Field(
        None,
        validation_alias=FUNCTION_NAME_VARIABLE,
        description="set by Lambda: the function, a dimension of its CloudWatch metrics",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _StrictEnvSource(settings_cls), dotenv_settings, file_secret_settings

    @field_validator("cors_allowed_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @property
    def auth_enabled(self) -> bool:
        keys = (self.auth_secret, self.auth_secret_arn, self.auth_public_key)
        return any(key is not None for key in keys)

    @model_validator(mode="after")
    def _auth_key_matches_algorithm(self) -> Self:
        keys = {
            f"{ENV_PREFIX}AUTH_SECRET": self.auth_secret,
            f"{ENV_PREFIX}AUTH_SECRET_ARN": self.auth_secret_arn,
            f"{ENV_PREFIX}AUTH_PUBLIC_KEY": self.auth_public_key,
        }
        chosen = [variable for variable, key in keys.items() if key is not None]
        if len(chosen) > 1:
            raise ValueError(f"set one of {', '.join(keys)}, not {' and '.join(chosen)}")
        if self.auth_public_key is None and chosen and self.auth_algorithm != "HS256":
            raise ValueError(f"{chosen[0]} goes with {ENV_PREFIX}AUTH_ALGORITHM=HS256")
        if self.auth_public_key is not None and self.auth_algorithm == "HS256":
            raise ValueError(
                f"{ENV_PREFIX}AUTH_PUBLIC_KEY needs {ENV_PREFIX}AUTH_ALGORITHM=RS256 or ES256"
            )
        if self.auth_secret is not None:
            check_secret_length(self.auth_secret.get_secret_value(), f"{ENV_PREFIX}AUTH_SECRET")
        if self.auth_public_key is not None:
            variable = f"{ENV_PREFIX}AUTH_PUBLIC_KEY"
            check_public_key(self.auth_public_key, self.auth_algorithm, variable)
        return self

    @property
    def write_window_seconds(self) -> float:
        """The longest a write to DynamoDB can take to land: every attempt's connect and
        read timeouts, plus botocore's standard-mode backoff between attempts (under
        2**n seconds before retry n + 1, at most 20)."""
        backoff = sum(min(2.0**n, 20.0) for n in range(self.dynamodb_max_attempts - 1))
        return self.dynamodb_max_attempts * 2 * self.dynamodb_timeout_seconds + backoff

    @model_validator(mode="after")
    def _retention_outlasts_a_write(self) -> Self:
        # An append decided while its predecessor was live could otherwise land after
        # TTL deleted the items around it, and reuse an id (see gateway/items.py).
        if self.retention_seconds <= self.write_window_seconds:
            raise ValueError(
                f"{ENV_PREFIX}RETENTION_SECONDS ({self.retention_seconds}) must be longer than "
                f"the {self.write_window_seconds:g} s a write can take to land with "
                f"{ENV_PREFIX}DYNAMODB_MAX_ATTEMPTS={self.dynamodb_max_attempts} and "
                f"{ENV_PREFIX}DYNAMODB_TIMEOUT_SECONDS={self.dynamodb_timeout_seconds:g}: "
                "raise the retention or lower those"
            )
        return self

    @field_validator("notify_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_redis_url(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _poll_bounds_ordered(self) -> Self:
        if self.poll_min_seconds > self.poll_max_seconds:
            raise ValueError(
                f"{ENV_PREFIX}POLL_MIN_SECONDS ({self.poll_min_seconds}) must not exceed "
                f"{ENV_PREFIX}POLL_MAX_SECONDS ({self.poll_max_seconds})"
            )
        if self.notify_url_arn is not None and self.notify_url is not None:
            raise ValueError(f"set {ENV_PREFIX}NOTIFY_URL or {ENV_PREFIX}NOTIFY_URL_ARN, not both")
        notified = self.notify_url is not None or self.notify_url_arn is not None
        if notified and self.notified_poll_seconds < self.poll_max_seconds:
            raise ValueError(
                f"{ENV_PREFIX}NOTIFIED_POLL_SECONDS ({self.notified_poll_seconds}) must not be "
                f"shorter than {ENV_PREFIX}POLL_MAX_SECONDS ({self.poll_max_seconds})"
            )
        return self


def check_redis_url(url: str) -> None:
    """``ValueError`` unless ``url`` is a redis:// or rediss:// URL; the message names
    the scheme only, since the URL holds the password."""
    if not url.startswith(("redis://", "rediss://")):
        scheme, separator, _ = url.partition("://")
        got = f"a {scheme[:16]!r} URL" if separator and scheme.isalpha() else "no URL"
        raise ValueError(
            f"must be a redis:// or rediss:// URL (got {got}); "
            "set the Redis or Valkey to notify through"
        )


def _is_secret(field: str) -> bool:
    info = Settings.model_fields.get(field)
    return info is not None and SecretStr in (
        info.annotation,
        *getattr(info.annotation, "__args__", ()),
    )


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with explicit ``overrides`` taking precedence,
    and the secrets at ``AUTH_SECRET_ARN`` and ``NOTIFY_URL_ARN`` fetched."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            if error["loc"] and error["loc"][0] in Settings.model_fields:
                name = f"{ENV_PREFIX}{field.upper()}"
            else:  # a variable read under its own name (AWS_LAMBDA_*), or the whole model
                name = field or "settings"
            # A model-level error's input is every setting, secrets included.
            shown = error["loc"] and not _is_secret(str(error["loc"][0]))
            got = f" (got {error.get('input')!r})" if shown else ""
            problems.append(f"{name}: {error['msg']}{got}")
        # Not chained: pydantic's own message would print the inputs in a traceback.
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
    if settings.auth_secret_arn is not None:
        variable = f"{ENV_PREFIX}AUTH_SECRET_ARN"
        secret = fetch_secret(settings.auth_secret_arn, variable)
        try:
            check_secret_length(secret, f"the secret at {variable}")
        except ValueError as exc:
            raise SettingsError(f"invalid settings: {exc}") from None
        settings = settings.model_copy(update={"auth_secret": SecretStr(secret)})
    if settings.notify_url_arn is not None:
        variable = f"{ENV_PREFIX}NOTIFY_URL_ARN"
        url = fetch_secret(settings.notify_url_arn, variable)
        try:
            check_redis_url(url)
        except ValueError as exc:
            raise SettingsError(f"invalid settings: the secret at {variable} {exc}") from None
        settings = settings.model_copy(update={"notify_url": SecretStr(url)})
    return settings


def runtime_api_address() -> str | None:
    """``AWS_LAMBDA_RUNTIME_API`` alone, without validating anything else: a runtime whose
    other settings are invalid must still report that to the Runtime API."""
    value = EnvSettingsSource(Settings)().get(RUNTIME_API_VARIABLE)
    return str(value) if value else None
