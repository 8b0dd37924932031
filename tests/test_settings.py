import os
import re
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr, TypeAdapter

from gateway.errors import SettingsError
from gateway.settings import Settings, load_settings, variable_names

SETTINGS_PAGE = Path(__file__).parent.parent / "docs" / "settings.md"


def test_settings_read_the_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSE_GATEWAY_TABLE_NAME", "my-events")
    monkeypatch.setenv("SSE_GATEWAY_MAX_SESSION_SECONDS", "1.5")
    monkeypatch.setenv("SSE_GATEWAY_RETRY_MS", "250")
    settings = load_settings()
    assert (settings.table_name, settings.max_session_seconds, settings.retry_ms) == (
        "my-events",
        1.5,
        250,
    )


def test_settings_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSE_GATEWAY_TABLE_NAME", "from-env")
    assert load_settings(table_name="explicit").table_name == "explicit"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SSE_GATEWAY_MAX_SESSION_SECONDS", "-1"),
        ("SSE_GATEWAY_MAX_SESSION_SECONDS", "soon"),
        ("SSE_GATEWAY_HEARTBEAT_SECONDS", "0"),
        ("SSE_GATEWAY_RETRY_MS", "1.5"),
        ("SSE_GATEWAY_MAX_BATCH_EVENTS", "101"),
        ("SSE_GATEWAY_MAX_EVENT_BYTES", "400001"),
    ],
)
def test_load_settings_names_the_invalid_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()


def test_load_settings_rejects_inverted_poll_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSE_GATEWAY_POLL_MIN_SECONDS", "5")
    monkeypatch.setenv("SSE_GATEWAY_POLL_MAX_SECONDS", "1")
    with pytest.raises(SettingsError, match="SSE_GATEWAY_POLL_MIN_SECONDS"):
        load_settings()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SSE_GATEWAY_AUTH_SECRET": "short"}, "SSE_GATEWAY_AUTH_SECRET"),
        (
            {"SSE_GATEWAY_AUTH_SECRET": "x" * 40, "SSE_GATEWAY_AUTH_ALGORITHM": "RS256"},
            "SSE_GATEWAY_AUTH_ALGORITHM",
        ),
        ({"SSE_GATEWAY_AUTH_PUBLIC_KEY": "-----BEGIN"}, "SSE_GATEWAY_AUTH_ALGORITHM"),
        ({"SSE_GATEWAY_AUTH_ALGORITHM": "none"}, "SSE_GATEWAY_AUTH_ALGORITHM"),
        (
            {"SSE_GATEWAY_AUTH_SECRET": "x" * 40, "SSE_GATEWAY_AUTH_PUBLIC_KEY": "k"},
            "SSE_GATEWAY_AUTH_PUBLIC_KEY",
        ),
    ],
)
def test_load_settings_rejects_inconsistent_auth(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()


def test_settings_auth_and_cors_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSE_GATEWAY_AUTH_SECRET", "s" * 32)
    monkeypatch.setenv("SSE_GATEWAY_CORS_ALLOWED_ORIGINS", "https://a.example, https://b.example")
    settings = load_settings()
    assert settings.auth_enabled
    assert "s" * 32 not in repr(settings)  # the secret never prints
    assert settings.cors_allowed_origins == ["https://a.example", "https://b.example"]
    assert not Settings(auth_secret=None).auth_enabled


def test_retention_must_outlast_the_longest_write(monkeypatch: pytest.MonkeyPatch) -> None:
    # 5 attempts x (5 s connect + 5 s read) + backoff of 1 + 2 + 4 + 8 s.
    assert load_settings().write_window_seconds == 65
    monkeypatch.setenv("SSE_GATEWAY_RETENTION_SECONDS", "60")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    for variable in ("RETENTION_SECONDS", "DYNAMODB_MAX_ATTEMPTS", "DYNAMODB_TIMEOUT_SECONDS"):
        assert f"SSE_GATEWAY_{variable}" in raised.value.message
    monkeypatch.setenv("SSE_GATEWAY_DYNAMODB_MAX_ATTEMPTS", "2")
    assert load_settings().retention_seconds == 60  # 2 x 10 s + 1 s of backoff fits


@pytest.mark.parametrize(
    ("variable", "closest"),
    [
        ("SSE_GATEWAY_HEARTBEAT_SECOND", "SSE_GATEWAY_HEARTBEAT_SECONDS"),
        ("sse_gateway_retry", "SSE_GATEWAY_RETRY_MS"),
        # Read under Lambda's own name, so the prefixed one would be ignored.
        ("SSE_GATEWAY_LAMBDA_RUNTIME_API", "AWS_LAMBDA_RUNTIME_API"),
    ],
)
def test_an_unknown_variable_stops_the_start_naming_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch, variable: str, closest: str
) -> None:
    monkeypatch.setenv(variable, "5")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert (
        f"{variable.upper()} is not a setting; the closest is {closest}: " in raised.value.message
    )
    with pytest.raises(SettingsError):
        Settings()  # not only through load_settings


def test_every_settings_own_variable_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, variable in variable_names(Settings).items():
        default = Settings.model_fields[name].default
        if default is not None:
            monkeypatch.setenv(variable, _as_variable(default))
    assert load_settings() == Settings()


def test_every_setting_says_what_it_is() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description and len(field.description) > 10, name


def test_the_settings_page_lists_every_setting_with_its_default() -> None:
    rows = re.findall(r"^\| `([A-Z_]+)` \| ([^|]*) \|", SETTINGS_PAGE.read_text(), re.MULTILINE)
    table = dict(rows)
    assert len(table) == len(rows), "a variable is listed twice"
    variables = variable_names(Settings)
    assert set(table) == set(variables.values()), set(table) ^ set(variables.values())
    for name, variable in variables.items():
        field = Settings.model_fields[name]
        # The first `literal` of the default column, parsed as the setting parses it;
        # a setting that is unset (None, no origins) by default shows no literal.
        literal = re.search(r"`([^`]*)`", table[variable])
        if field.default in (None, []):
            assert literal is None, variable
        else:
            assert literal is not None, variable
            value = TypeAdapter(field.annotation).validate_python(literal[1])
            assert value == field.default, variable


SECRET_FIELDS = [
    name
    for name, field in Settings.model_fields.items()
    if SecretStr in (field.annotation, *getattr(field.annotation, "__args__", ()))
]
# Each beside a secret that is itself fine: invalid at field level elsewhere, at
# model level (whose error's input is every setting), an unknown variable.
BESIDE_A_SECRET = [
    {"SSE_GATEWAY_RETRY_MS": "-1"},
    {"SSE_GATEWAY_POLL_MIN_SECONDS": "5", "SSE_GATEWAY_POLL_MAX_SECONDS": "1"},
    {"SSE_GATEWAY_RETENTION_SECONDS": "60"},
    {"SSE_GATEWAY_AUTH_ALGORITHM": "RS256"},
    {"SSE_GATEWAY_AUTH_PUBLIC_KEY": "not a key"},
    {"SSE_GATEWAY_HEARTBEAT_SECOND": "5"},
]


def _printed(error: BaseException) -> str:
    """All an error could show: its message and its whole traceback, causes included."""
    return "".join(traceback.format_exception(error))


@pytest.mark.parametrize("field", SECRET_FIELDS)
@pytest.mark.parametrize("beside", [{}, *BESIDE_A_SECRET])
def test_no_settings_error_prints_a_secret(
    monkeypatch: pytest.MonkeyPatch, field: str, beside: dict[str, str]
) -> None:
    assert SECRET_FIELDS == ["notify_url", "auth_secret"]  # a new secret field is covered too
    variable = variable_names(Settings)[field]
    # Alone, too short to be a key; beside another mistake, long enough to be one.
    secret = "leak-" + ("0123456789abcdef" * 3 if beside else "short")
    for name, value in beside.items():
        monkeypatch.setenv(name, value)
    # A wrong type passed in code: pydantic's error carries the input.
    with pytest.raises(SettingsError) as raised:
        load_settings(**{field: [secret]})
    assert "SSE_GATEWAY_" in raised.value.message
    assert "leak-" not in _printed(raised.value)
    monkeypatch.setenv(variable, secret)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "SSE_GATEWAY_" in raised.value.message
    assert "leak-" not in _printed(raised.value)


def test_no_start_up_path_prints_a_secret(tmp_path: Path) -> None:
    """The container's and both functions' starts, as processes: what reaches the logs."""
    env = {
        **os.environ,
        "SSE_GATEWAY_AUTH_SECRET": "leak-" + "x" * 40,
        "SSE_GATEWAY_POLL_MIN_SECONDS": "5",
        "SSE_GATEWAY_POLL_MAX_SECONDS": "1",
        "AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9",  # nothing listens: the report fails too
    }
    publish = "from handlers.publish import handler; handler({}, None)"
    starts = [
        [str(Path(sys.executable).parent / "sse-gateway"), "serve"],
        [sys.executable, "-m", "handlers.stream"],
        [sys.executable, "-c", publish],
    ]
    for command in starts:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0, command
        assert "SSE_GATEWAY_POLL_MIN_SECONDS" in done.stdout + done.stderr, command
        assert "leak-" not in done.stdout + done.stderr, command


def _pem(key: Any) -> str:
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return str(public.decode())


@pytest.mark.parametrize(
    ("key", "algorithm", "problem"),
    [
        ("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----", "RS256", "PEM"),
        ("ssh-rsa AAAAB3NzaC1yc2E", "RS256", "PEM"),
        (_pem(ec.generate_private_key(ec.SECP256R1())), "RS256", "RSAPublicKey"),
        (_pem(rsa.generate_private_key(65537, 2048)), "ES256", "EllipticCurvePublicKey"),
    ],
)
def test_a_public_key_is_parsed_at_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, key: str, algorithm: str, problem: str
) -> None:
    monkeypatch.setenv("SSE_GATEWAY_AUTH_PUBLIC_KEY", key)
    monkeypatch.setenv("SSE_GATEWAY_AUTH_ALGORITHM", algorithm)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "SSE_GATEWAY_AUTH_PUBLIC_KEY" in raised.value.message
    assert problem in raised.value.message
    monkeypatch.setenv("SSE_GATEWAY_AUTH_ALGORITHM", "RS256")
    monkeypatch.setenv("SSE_GATEWAY_AUTH_PUBLIC_KEY", _pem(rsa.generate_private_key(65537, 2048)))
    assert load_settings().auth_enabled


def _as_variable(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def test_a_notify_url_that_is_no_redis_url_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSE_GATEWAY_NOTIFY_URL", "http://admin:hunter2-secret@cache:6379")
    with pytest.raises(SettingsError, match="SSE_GATEWAY_NOTIFY_URL") as raised:
        load_settings()
    assert "redis:// or rediss://" in raised.value.message
    assert "hunter2-secret" not in str(raised.value)
    monkeypatch.setenv("SSE_GATEWAY_NOTIFY_URL", "rediss://admin:hunter2-secret@cache:6379")
    settings = load_settings()
    assert settings.notify_url is not None
    assert "hunter2-secret" not in repr(settings)


def test_the_safety_poll_is_no_shorter_than_the_idle_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSE_GATEWAY_NOTIFY_URL", "redis://:hunter2-secret@cache:6379")
    monkeypatch.setenv("SSE_GATEWAY_NOTIFIED_POLL_SECONDS", "0.5")
    with pytest.raises(SettingsError, match="SSE_GATEWAY_NOTIFIED_POLL_SECONDS") as raised:
        load_settings()
    assert "hunter2-secret" not in str(raised.value)
