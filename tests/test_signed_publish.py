"""examples/signed_publish.py, the SigV4-signed publish for a publish URL whose auth
is AWS_IAM, against a real gateway under uvicorn. Lambda's signature check is out
of reach here, so the test checks what it needs (a SigV4 signature for the
``lambda`` service over the token, the body and the headers the gateway reads) and
that the gateway takes the request as it comes, the JWT from ``?token=``."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from botocore.credentials import Credentials

from tests.servers import GatewayServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "signed_publish.py"

SECRET = "a-test-secret-that-is-long-enough-0123456789"
CREDENTIALS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session")


@pytest.fixture(scope="module")
def example() -> ModuleType:
    """examples/signed_publish.py as a module (examples/ is no package)."""
    spec = importlib.util.spec_from_file_location("signed_publish", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _token(*channels: str) -> str:
    grant = {"exp": int(time.time()) + 300, "sse": {"publish": list(channels)}}
    return jwt.encode(grant, SECRET, algorithm="HS256")


async def test_a_signed_publish_reaches_the_gateway_with_its_token_in_the_query(
    gateway: Callable[..., GatewayServer], http: httpx.AsyncClient, example: ModuleType
) -> None:
    server = gateway(auth_secret=SECRET)
    token = _token("orders:*")
    request = example.signed_publish(
        f"{server.url}/",
        "orders:42",
        {"status": "paid"},
        token=token,
        credentials=CREDENTIALS,
        region="eu-west-1",
        idempotency_key="order-42-paid",
    )
    headers = {name.lower(): value for name, value in request.header_items()}
    scheme, _, fields = headers["authorization"].partition(" ")
    assert scheme == "AWS4-HMAC-SHA256"
    credential, signed, signature = (part.split("=", 1)[1] for part in fields.split(", "))
    assert credential.endswith("/eu-west-1/lambda/aws4_request")
    assert {"host", "x-amz-date", "content-type", "idempotency-key"} <= set(signed.split(";"))
    assert len(signature) == 64 and headers["x-amz-security-token"] == "session"
    assert parse_qs(urlsplit(request.full_url).query) == {"token": [token]}

    # As Lambda passes it on once the signature checks out: every header, the query.
    assert request.data is not None
    sent = await http.post(request.full_url, content=request.data, headers=headers)
    assert sent.status_code == 201, sent.text
    (event_id,) = sent.json()["ids"]
    again = await http.post(request.full_url, content=request.data, headers=headers)
    assert again.json()["ids"] == [event_id] and again.headers["idempotent-replayed"] == "true"
    # The token is what authorized it: another channel's token is refused.
    other = example.signed_publish(
        f"{server.url}/",
        "orders:42",
        1,
        token=_token("news"),
        credentials=CREDENTIALS,
        region="eu-west-1",
    )
    assert other.data is not None
    refused = await http.post(
        other.full_url, content=other.data, headers=dict(other.header_items())
    )
    assert refused.status_code == 403


async def test_the_signed_publish_example_runs_as_a_script(
    gateway: Callable[..., GatewayServer],
) -> None:
    server = gateway(auth_secret=SECRET)
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "example",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    command = [
        sys.executable,
        str(EXAMPLE),
        f"{server.url}/",
        "orders:7",
        '{"status": "shipped"}',
        "--token",
        _token("orders:7"),
    ]
    done = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    (event_id,) = json.loads(done.stdout)["ids"]
    assert event_id.endswith("-1")


@pytest.mark.parametrize(
    ("url", "region"),
    [("https://abcdefghij.lambda-url.ap-southeast-2.on.aws/", "ap-southeast-2")],
)
def test_the_example_finds_the_region_in_a_function_url(
    example: ModuleType, url: str, region: str
) -> None:
    assert example._region(url, None) == region
    assert example._region(url, "eu-west-1") == "eu-west-1"
