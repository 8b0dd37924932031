import pytest

from gateway.errors import SettingsError
from gateway.settings import Settings, load_settings


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


def test_settings_defaults_are_documented_values() -> None:
    settings = Settings()
    assert settings.heartbeat_seconds == 15
    assert settings.max_session_seconds == 600
    assert settings.retention_seconds == 86_400


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
