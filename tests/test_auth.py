"""JWT channel grants: pure checks, then through a real server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth import (
    Action,
    Authenticator,
    Grants,
    bearer_token,
    pattern_matches,
)
from gateway.errors import Forbidden, SettingsError, Unauthorized
from gateway.settings import Settings
from tests.eventstream import read_session
from tests.servers import GatewayServer

SECRET = "a-test-secret-that-is-long-enough-for-hs512-too-0123456789abcdef"


def mint(
    claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256", **headers: Any
) -> str:
    payload = {"exp": int(time.time()) + 300, **claims}
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers or None)


@pytest.mark.parametrize(
    ("pattern", "channel", "allowed"),
    [
        ("orders:42", "orders:42", True),
        ("orders:42", "orders:420", False),
        ("orders:*", "orders:42", True),
        ("orders:*", "orders:a.b-c_d", True),
        ("orders:*", "orders-secret", False),
        ("orders:*", "orders:", False),
        ("orders:*", "orders", False),
        ("orders:*", "orders:42:items", False),
        ("orders:*", "ordersX:42", False),
        ("orders:*", "xorders:42", False),
        ("*", "anything", True),
        ("*", "a:b", False),
        ("a:b:*", "a:b:c", True),
        ("a:b:*", "a:bc", False),
    ],
)
def test_pattern_matches_table(pattern: str, channel: str, allowed: bool) -> None:
    assert pattern_matches(pattern, channel) is allowed


@pytest.mark.parametrize(
    "claim",
    [
        "orders:*",
        ["orders:*"],
        {"subscribe": "orders:*"},
        {"subscribe": [42]},
        {"subscribe": ["orders:*:x"]},
        {"subscribe": ["or*"]},
        {"subscribe": ["a\nb"]},
        {"publish": [""]},
        {"publish": ["x" * 129]},
        {"admin": ["*"]},
    ],
)
def test_grants_from_claim_rejects_malformed_claims(claim: Any) -> None:
    with pytest.raises(Unauthorized) as caught:
        Grants.from_claim(claim)
    assert caught.value.message in {
        'the token\'s "sse" claim must be {"subscribe": [...], "publish": [...]}',
        'the token\'s "sse.subscribe" must be a list of channel patterns',
        'the token\'s "sse.publish" must be a list of channel patterns',
    }


def test_grants_from_claim_accepts_patterns_of_one_to_128_characters() -> None:
    grants = Grants.from_claim({"subscribe": ["a", "x" * 128, "*"]}, expires_at=5.0)
    assert grants == Grants(("a", "x" * 128, "*"), (), 5.0)


def test_bearer_token_prefers_header_then_query_then_cookie() -> None:
    assert bearer_token({"authorization": "Bearer h"}, {"token": "q"}, {"sse_token": "c"}) == "h"
    assert bearer_token({"authorization": "Basic x"}, {"token": "q"}, {"sse_token": "c"}) == "q"
    assert bearer_token({}, {}, {"sse_token": "c"}) == "c"
    assert bearer_token({"authorization": "Bearer "}, {}, {}) is None
    assert bearer_token({"authorization": "bearer  h "}, {"token": "q"}, {}) == "h"


@pytest.mark.parametrize(
    ("header", "named"),
    [
        ("Token abc.def.ghi", "'Token' "),
        ("JWT abc.def.ghi", "'JWT' "),
        ("abc.def.ghi", ""),  # no scheme: the header may be the token itself, never shown
    ],
)
def test_an_authorization_header_of_another_scheme_is_told_the_bearer_scheme(
    header: str, named: str
) -> None:
    with pytest.raises(Unauthorized) as raised:
        bearer_token({"authorization": header}, {}, {})
    assert raised.value.message == (
        f"the Authorization header's scheme {named}is not accepted: send "
        "Authorization: Bearer <jwt> (or ?token=<jwt>, or the sse_token cookie)"
    )
    assert "abc.def" not in raised.value.message
    # A signed request (SigV4 in Authorization) carries its JWT in ?token=.
    assert bearer_token({"authorization": header}, {"token": "q"}, {}) == "q"


def _keys(kind: str) -> tuple[Any, str]:
    private: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public.decode()


GRANT = {"sse": {"subscribe": ["orders:*"], "publish": ["orders:42"]}}


HS256 = {"alg": "HS256", "typ": "JWT"}


def _b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def _unsigned(claims: dict[str, Any]) -> str:
    """An ``alg: none`` token, as an attacker would write it by hand."""
    header = _b64({"alg": "none", "typ": "JWT"})
    return f"{header}.{_b64({'exp': int(time.time()) + 300, **claims})}."


@pytest.mark.parametrize(
    ("token", "error"),
    [
        (
            None,
            r"^a token is required: send Authorization: Bearer <jwt>, \?token=<jwt> or the "
            r"sse_token cookie$",
        ),
        ("not-a-jwt", "invalid"),
        (mint(GRANT, SECRET[::-1]), "invalid"),
        (mint({**GRANT, "exp": int(time.time()) - 60}), r"^the token has expired: get a new one$"),
        (
            mint({**GRANT, "nbf": int(time.time()) + 86_400}),
            r"^the token is not valid yet \(nbf\)$",
        ),  # minted at collection
        (_unsigned(GRANT), "invalid"),
        (jwt.encode({"sse": GRANT["sse"]}, SECRET, algorithm="HS256"), "invalid"),  # no exp
        (mint({"sse": {"subscribe": "orders:*"}}), "must be a list"),
        (mint(GRANT, SECRET, "HS512"), "invalid"),
    ],
)
def test_authenticator_rejects_bad_tokens(token: str | None, error: str) -> None:
    authenticator = Authenticator(Settings(auth_secret=SECRET))
    with pytest.raises(Unauthorized, match=error):
        authenticator.grants(token)


def test_authenticator_allows_small_clock_skew() -> None:
    authenticator = Authenticator(Settings(auth_secret=SECRET, auth_leeway_seconds=10))
    expires = int(time.time()) - 5
    skewed = mint({**GRANT, "nbf": int(time.time()) + 5, "exp": expires})
    assert authenticator.grants(skewed).allows(Action.SUBSCRIBE, "orders:1")
    # The grant holds until its expiry plus the same leeway.
    assert authenticator.authorize(skewed, Action.SUBSCRIBE, "orders:1").until == expires + 10


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_authenticator_with_public_key_refuses_algorithm_confusion(algorithm: str) -> None:
    private, public = _keys(algorithm)
    authenticator = Authenticator(Settings(auth_public_key=public, auth_algorithm=algorithm))
    grants = authenticator.grants(mint(GRANT, private, algorithm))
    assert grants.allows(Action.PUBLISH, "orders:42")
    # The classic confusion: HS256 signed with the public key as the HMAC secret.
    unsigned = _unsigned(GRANT).replace(_b64({"alg": "none", "typ": "JWT"}), _b64(HS256))
    signature = hmac.new(public.encode(), unsigned.rstrip(".").encode(), hashlib.sha256).digest()
    forged = unsigned + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
    with pytest.raises(Unauthorized, match="alg"):
        authenticator.grants(forged)
    with pytest.raises(Unauthorized):
        authenticator.grants(_unsigned(GRANT))


def test_authenticator_authorize_separates_subscribe_and_publish() -> None:
    authenticator = Authenticator(Settings(auth_secret=SECRET))
    token = mint(GRANT)
    authenticator.authorize(token, Action.SUBSCRIBE, "orders:7")
    authenticator.authorize(token, Action.PUBLISH, "orders:42")
    with pytest.raises(Forbidden):
        authenticator.authorize(token, Action.PUBLISH, "orders:7")
    with pytest.raises(Forbidden):
        authenticator.authorize(token, Action.SUBSCRIBE, "orders-secret")


StartGateway = Callable[..., GatewayServer]


async def test_app_answers_a_token_scheme_naming_bearer(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(auth_secret=SECRET)
    response = await http.post(
        f"{server.url}/channels/orders:42/events",
        json={"data": 1},
        headers={"authorization": f"Token {mint(GRANT)}"},
    )
    assert response.status_code == 401
    assert "Authorization: Bearer <jwt>" in response.json()["error"]["message"]
    assert "'Token'" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("method", "channel", "token", "status"),
    [
        ("POST", "orders:42", None, 401),
        ("POST", "orders:42", "garbage", 401),
        ("POST", "orders:42", mint({**GRANT, "exp": 1}), 401),
        ("POST", "orders:42", _unsigned(GRANT), 401),
        ("POST", "orders:7", mint(GRANT), 403),
        ("POST", "orders-secret", mint({"sse": {"publish": ["orders:*"]}}), 403),
        ("POST", "orders:", mint({"sse": {"publish": ["orders:*"]}}), 403),
        ("GET", "orders-secret", mint(GRANT), 403),
        ("GET", "orders:42", None, 401),
        ("GET", "orders:42", mint({"sse": {"publish": ["orders:42"]}}), 403),
    ],
)
async def test_app_refuses_requests_without_a_covering_grant(
    gateway: StartGateway,
    http: httpx.AsyncClient,
    method: str,
    channel: str,
    token: str | None,
    status: int,
) -> None:
    server = gateway(auth_secret=SECRET, max_session_seconds=0.5)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = await http.request(
        method, f"{server.url}/channels/{channel}/events", json={"data": 1}, headers=headers
    )
    assert response.status_code == status
    assert response.json()["error"]["code"] == ("unauthorized" if status == 401 else "forbidden")
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    ok = await http.post(
        f"{server.url}/channels/orders:42/events",
        json={"data": "after"},
        headers={"authorization": f"Bearer {mint(GRANT)}"},
    )
    assert ok.json()["ids"][0].endswith("-1")  # nothing was written before


async def test_app_reads_the_token_from_query_or_cookie_for_eventsource(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(auth_secret=SECRET, max_session_seconds=0.5)
    url = f"{server.url}/channels/orders:42/events"
    by_query = await read_session(http, url, params={"token": mint(GRANT)})
    assert (by_query.status, by_query.last_event_id) == (200, "0")
    async with httpx.AsyncClient(cookies={"sse_token": mint(GRANT)}) as with_cookie:
        by_cookie = await read_session(with_cookie, url)
    assert by_cookie.status == 200


AUDIENCE, ISSUER = "sse-gateway", "https://auth.example.com"


@pytest.mark.parametrize(
    ("claims", "error"),
    [
        ({"iss": ISSUER}, 'missing the "aud" claim'),
        ({"aud": AUDIENCE}, 'missing the "iss" claim'),
        ({"aud": "another-service", "iss": ISSUER}, "another audience"),
        ({"aud": AUDIENCE, "iss": "https://evil.example.com"}, "another issuer"),
    ],
)
def test_authenticator_with_audience_and_issuer_refuses_other_tokens(
    claims: dict[str, Any], error: str
) -> None:
    settings = Settings(auth_secret=SECRET, auth_audience=AUDIENCE, auth_issuer=ISSUER)
    authenticator = Authenticator(settings)
    with pytest.raises(Unauthorized, match=error):
        authenticator.grants(mint({**GRANT, **claims}))
    matching = mint({**GRANT, "aud": [AUDIENCE, "other"], "iss": ISSUER})
    assert authenticator.grants(matching).allows(Action.SUBSCRIBE, "orders:1")


async def test_app_answers_401_to_a_token_for_another_audience(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(auth_secret=SECRET, auth_audience=AUDIENCE, auth_issuer=ISSUER)
    url = f"{server.url}/channels/orders:42/events"
    other = mint({**GRANT, "aud": "another-service", "iss": ISSUER})
    refused = await http.post(url, json={"data": 1}, headers={"authorization": f"Bearer {other}"})
    assert refused.status_code == 401
    assert "another audience" in refused.json()["error"]["message"]
    ours = mint({**GRANT, "aud": AUDIENCE, "iss": ISSUER})
    accepted = await http.post(url, json={"data": 1}, headers={"authorization": f"Bearer {ours}"})
    assert accepted.status_code == 201


async def test_a_session_ends_at_its_tokens_expiry_and_the_reconnect_is_refused(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(auth_secret=SECRET, auth_leeway_seconds=0, max_session_seconds=30)
    token = mint({**GRANT, "exp": int(time.time()) + 3})
    urls = [
        f"{server.url}/channels/orders:42/events?token={token}",
        f"{server.url}/events?channel=orders:42&channel=orders:7&token={token}",
    ]
    started = time.monotonic()
    sessions = await asyncio.gather(*(read_session(http, url) for url in urls))
    assert [(s.status, s.retry) for s in sessions] == [(200, 50), (200, 50)]
    # Ended by the token (3 s), not by the 30 s deadline: nearer the one than the other.
    assert time.monotonic() - started < (3 + 30) / 2
    for url in urls:
        refused = await read_session(http, url)
        assert refused.status == 401


async def test_a_multi_channel_subscription_needs_every_channel_granted(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(auth_secret=SECRET, max_session_seconds=0.5)
    query = f"channel=orders:1&channel=admin:1&channel=secret:2&token={mint(GRANT)}"
    denied = await http.get(f"{server.url}/events?{query}")
    assert denied.status_code == 403
    assert "'admin:1'" in denied.json()["error"]["message"]  # the first one denied
    allowed = await read_session(
        http, f"{server.url}/events?channel=orders:1&channel=orders:2&token={mint(GRANT)}"
    )
    assert allowed.status == 200


def test_an_authenticator_never_runs_with_an_unfetched_secret() -> None:
    settings = Settings(auth_secret_arn="arn:aws:secretsmanager:eu-west-1:123456789012:secret:s")
    with pytest.raises(SettingsError) as caught:
        Authenticator(settings)
    assert caught.value.message == (
        "the secret at SSE_GATEWAY_AUTH_SECRET_ARN was not fetched: use load_settings"
    )
