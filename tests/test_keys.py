"""The HS256 secret read from Secrets Manager or SSM at start (gateway/keys.py), against
moto's server (which serves every AWS service it emulates on one endpoint), reached
through botocore's own per-service endpoint variables, as a deployment's SDK would be.
The key checks themselves are tested through load_settings (tests/test_settings.py)."""

from __future__ import annotations

import asyncio
import json
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import botocore.session
import jwt
import pytest

from gateway.dynamodb import open_dynamodb
from gateway.errors import SettingsError
from gateway.settings import Settings, load_settings
from handlers.publish import PublishFunction
from infra.local import local_session
from infra.table import ensure_table
from tests.lambda_events import load_event
from tests.servers import FaultProxy

SECRET = "a-secret-kept-in-aws-and-long-enough-0123456789"
VARIABLE = "SSE_GATEWAY_AUTH_SECRET_ARN"


@pytest.fixture
def aws(
    dynamodb_endpoint: str, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], Any]:
    """A factory of clients of moto's server; the code under test reaches it through
    the proxy, which counts its requests."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": fault_proxy.url,
        "AWS_ENDPOINT_URL_SSM": fault_proxy.url,
    }.items():
        monkeypatch.setenv(name, value)

    def client(service: str) -> Any:
        return botocore.session.get_session().create_client(
            service, region_name="us-east-1", endpoint_url=dynamodb_endpoint
        )

    return client


def _secret(aws: Callable[[str], Any], value: str) -> str:
    created = aws("secretsmanager").create_secret(Name=f"s-{time.time_ns()}", SecretString=value)
    return str(created["ARN"])


def _parameter(aws: Callable[[str], Any], value: str) -> str:
    name = f"/sse-gateway/{time.time_ns()}/auth-secret"
    ssm = aws("ssm")
    ssm.put_parameter(Name=name, Value=value, Type="SecureString")
    return str(ssm.get_parameter(Name=name)["Parameter"]["ARN"])


@pytest.mark.parametrize("store", [_secret, _parameter])
def test_the_secret_is_read_from_its_arn(
    aws: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch, store: Any
) -> None:
    monkeypatch.setenv(VARIABLE, store(aws, SECRET))
    settings = load_settings()
    assert settings.auth_secret is not None
    assert settings.auth_secret.get_secret_value() == SECRET
    assert settings.auth_enabled and SECRET not in repr(settings)


@pytest.mark.parametrize(
    ("arn", "problem"),
    [
        ("arn:aws:secretsmanager:us-east-1:123456789012:secret:missing-AbCdEf", "ResourceNotFound"),
        ("arn:aws:ssm:us-east-1:123456789012:parameter/missing", "ParameterNotFound"),
    ],
)
def test_a_secret_that_cannot_be_read_stops_the_start_naming_the_variable(
    aws: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch, arn: str, problem: str
) -> None:
    monkeypatch.setenv(VARIABLE, arn)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert VARIABLE in raised.value.message and arn in raised.value.message
    assert problem in raised.value.message


@pytest.mark.parametrize("store", [_secret, _parameter])
def test_a_short_secret_in_aws_is_refused_without_printing_it(
    aws: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch, store: Any
) -> None:
    monkeypatch.setenv(VARIABLE, store(aws, "leak-short"))
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert VARIABLE in raised.value.message and "32 characters" in raised.value.message
    assert "leak-" not in "".join(traceback.format_exception(raised.value))


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SSE_GATEWAY_AUTH_SECRET_ARN": "arn:aws:s3:::bucket/secret"}, VARIABLE),
        ({"SSE_GATEWAY_AUTH_SECRET": SECRET}, "SSE_GATEWAY_AUTH_SECRET"),
        ({"SSE_GATEWAY_AUTH_ALGORITHM": "RS256"}, "SSE_GATEWAY_AUTH_ALGORITHM=HS256"),
    ],
)
def test_the_secret_arn_is_checked_before_anything_is_read(
    aws: Callable[[str], Any],
    fault_proxy: FaultProxy,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    variable: str,
) -> None:
    monkeypatch.setenv(VARIABLE, _secret(aws, SECRET))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()
    assert fault_proxy.seen == []


NOTIFY_VARIABLE = "SSE_GATEWAY_NOTIFY_URL_ARN"
NOTIFY_URL = "rediss://default:a-token-kept-in-aws@cache.example:6379/0"


@pytest.mark.parametrize("store", [_secret, _parameter])
def test_the_notify_url_is_read_from_its_arn(
    aws: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch, store: Any
) -> None:
    monkeypatch.setenv(NOTIFY_VARIABLE, store(aws, NOTIFY_URL))
    settings = load_settings()
    assert settings.notify_url is not None
    assert settings.notify_url.get_secret_value() == NOTIFY_URL
    assert "a-token-kept" not in repr(settings) and "a-token-kept" not in str(settings)
    assert settings.auth_secret is None  # one secret read does not stand for the other


def test_a_notify_url_arn_holding_no_redis_url_is_refused_without_printing_it(
    aws: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(NOTIFY_VARIABLE, _secret(aws, "https://user:leaky-password@cache:6379"))
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert NOTIFY_VARIABLE in raised.value.message and "redis://" in raised.value.message
    assert "leaky" not in "".join(traceback.format_exception(raised.value))


def test_the_notify_url_and_its_arn_are_not_both_set(
    aws: Callable[[str], Any], fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(NOTIFY_VARIABLE, _secret(aws, NOTIFY_URL))
    monkeypatch.setenv("SSE_GATEWAY_NOTIFY_URL", "redis://:leaky-password@127.0.0.1:6379")
    with pytest.raises(SettingsError, match="NOTIFY_URL or SSE_GATEWAY_NOTIFY_URL_ARN, not both"):
        load_settings()
    assert fault_proxy.seen == []  # refused before anything is read


def test_an_unfetched_secret_arn_never_means_an_empty_key() -> None:
    from gateway.auth import Authenticator

    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:s-AbCdEf"
    with pytest.raises(SettingsError, match="load_settings"):
        Authenticator(Settings(auth_secret_arn=arn))


@pytest.fixture
def publish_function(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[], PublishFunction]]:
    settings = make_settings()
    monkeypatch.setenv("SSE_GATEWAY_TABLE_NAME", settings.table_name)
    monkeypatch.setenv("SSE_GATEWAY_DYNAMODB_ENDPOINT_URL", str(settings.dynamodb_endpoint_url))
    asyncio.run(_create_table(settings))
    functions: list[PublishFunction] = []

    def make() -> PublishFunction:
        functions.append(PublishFunction())
        return functions[-1]

    yield make
    for function in functions:
        function.close()


async def _create_table(settings: Settings) -> None:
    async with open_dynamodb(settings, local_session()) as client:
        await ensure_table(client, settings.table_name)


def test_the_publish_function_reads_its_secret_once_per_environment(
    aws: Callable[[str], Any],
    fault_proxy: FaultProxy,
    monkeypatch: pytest.MonkeyPatch,
    publish_function: Callable[[], PublishFunction],
) -> None:
    monkeypatch.setenv(VARIABLE, _secret(aws, SECRET))
    function = publish_function()
    grant = {"exp": int(time.time()) + 300, "sse": {"publish": ["orders:*"]}}
    signed = jwt.encode(grant, SECRET, algorithm="HS256")
    forged = jwt.encode(grant, "another-secret-that-is-long-enough-012345", algorithm="HS256")
    for _ in range(2):
        accepted = function(load_event("publish_single", authorization=f"Bearer {signed}"), None)
        assert accepted.get("statusCode") == 201, accepted
    refused = function(load_event("publish_single", authorization=f"Bearer {forged}"), None)
    assert refused["statusCode"] == 401, refused
    assert json.loads(refused["body"])["error"]["code"] == "unauthorized"
    assert fault_proxy.seen == ["getsecretvalue"]  # once, at the environment's start
