"""SigV4 as botocore's ``SigV4Auth`` signs: moto checks no signature, so the proof
is equality with botocore's own header for the same request, credentials and
second, at every kind of endpoint (HTTPS on the default port, a path, IPv6)."""

from __future__ import annotations

import calendar
import time

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from gateway.sigv4 import Signer, host_of


def _epoch(amz_date: str) -> float:
    return float(calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ")))


@pytest.mark.parametrize(
    "url",
    [
        "https://dynamodb.eu-west-3.amazonaws.com",
        "https://dynamodb.eu-west-3.amazonaws.com:443",
        "http://localhost:8000",
        "https://proxy.internal:8443/dynamodb",
        "http://[::1]:8000",
    ],
)
@pytest.mark.parametrize("extra", [{}, {"X-Amzn-Trace-Id": "Root=1-abc;Sampled=1"}])
def test_the_signature_is_botocores_sigv4_at_any_endpoint(url: str, extra: dict[str, str]) -> None:
    credentials = Credentials("AKIDEXAMPLE", "secret/key+", "a  token  with  spaces")
    headers = {"X-Amz-Target": "DynamoDB_20120810.Query", "Content-Type": "x", **extra}
    body = b'{"TableName": "t\\u00e9"}'
    theirs = AWSRequest(method="POST", url=url, headers=dict(headers), data=body)
    SigV4Auth(credentials, "dynamodb", "eu-west-3").add_auth(theirs)
    ours = Signer("eu-west-3", url, "dynamodb").sign(
        headers,
        body,
        access_key=credentials.access_key,
        secret_key=credentials.secret_key,
        token=credentials.token,
        now=_epoch(theirs.context["timestamp"]),
    )
    assert ours["Authorization"] == theirs.headers["Authorization"]
    assert ours["X-Amz-Date"] == theirs.headers["X-Amz-Date"]


def test_the_signing_key_is_derived_again_on_a_new_day_or_secret() -> None:
    signer = Signer("us-east-1", "http://localhost:8000/", "dynamodb")
    day = 86_400.0
    signatures = set()
    for secret, now in [("s", 10 * day), ("s", 10 * day + 5), ("s", 11 * day), ("t", 11 * day)]:
        ours = signer.sign({}, b"{}", access_key="a", secret_key=secret, token=None, now=now)
        theirs = AWSRequest(method="POST", url="http://localhost:8000/", data=b"{}")
        theirs.headers["X-Amz-Date"] = theirs.context["timestamp"] = ours["X-Amz-Date"]
        auth = SigV4Auth(Credentials("a", secret), "dynamodb", "us-east-1")
        string_to_sign = auth.string_to_sign(theirs, auth.canonical_request(theirs))
        assert ours["Authorization"].endswith(f"Signature={auth.signature(string_to_sign, theirs)}")
        signatures.add(ours["Authorization"])
    assert len(signatures) == 4


def test_the_host_is_the_one_botocore_signs() -> None:
    assert host_of("https://dynamodb.us-east-1.amazonaws.com:443/") == (
        "dynamodb.us-east-1.amazonaws.com"
    )
    assert host_of("http://user:pw@Example.com:8000") == "example.com:8000"
    assert host_of("http://[::1]:8000/x") == "[::1]:8000"
