"""Each subject's share of a process (``gateway.quota``): the bookkeeping itself, and
a sprayer against a real server, answered 429 while other subjects go on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import jwt
import pytest

from gateway.errors import TooManyRequests
from gateway.quota import SubjectQuota
from tests.servers import GatewayServer

StartGateway = Callable[..., GatewayServer]
SECRET = "a-quota-test-secret-that-is-long-enough-0123"


def test_a_subject_may_hold_its_share_of_sessions_and_no_more_until_one_ends() -> None:
    quota = SubjectQuota(max_sessions=2, max_feeds=100)
    first, _ = quota.acquire("a", ["x"]), quota.acquire("a", ["y"])
    with pytest.raises(TooManyRequests) as refused:
        quota.acquire("a", ["z"])
    assert refused.value.code == "too_many_sessions"
    quota.acquire("b", ["z"])  # another subject's share is its own
    first.release()
    first.release()  # once only
    assert quota.sessions("a") == 1
    quota.acquire("a", ["z"])


def test_channels_others_follow_cost_nothing_and_new_ones_count_against_the_share() -> None:
    quota = SubjectQuota(max_sessions=100, max_feeds=2)
    others = quota.acquire("victim", ["shared", "other"])
    quota.acquire("sprayer", ["s1", "s2", "shared", "other"])  # two of its own
    with pytest.raises(TooManyRequests) as refused:
        quota.acquire("sprayer", ["s3"])
    assert refused.value.code == "too_many_feeds"
    quota.acquire("sprayer", ["s1", "shared"])  # nothing new: always room
    quota.acquire("victim", ["v1"])  # the victim's own share is untouched
    assert (quota.alone("sprayer"), quota.alone("victim")) == (2, 1)
    others.release()
    assert quota.alone("sprayer") == 4  # the channels it now follows alone


def _token(subject: str) -> str:
    claims = {"sub": subject, "exp": int(time.time()) + 600, "sse": {"subscribe": ["*"]}}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@asynccontextmanager
async def _holding(http: httpx.AsyncClient) -> AsyncIterator[Callable[..., object]]:
    """Opens sessions and keeps them open (their first chunk read) until the block ends;
    a refused one is returned as its response, read."""
    reading: list[AsyncIterator[bytes]] = []  # a dropped iterator would close its stream
    async with AsyncExitStack() as stack:

        async def hold(url: str, **params: object) -> httpx.Response:
            response = await stack.enter_async_context(http.stream("GET", url, params=params))
            if response.status_code == 200:
                reading.append(response.aiter_raw())
                await anext(reading[-1])
            else:
                await response.aread()
            return response

        yield hold


async def test_a_sprayer_is_answered_429_and_the_other_subjects_sessions_go_on(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(
        auth_secret=SECRET, max_feeds=40, max_feeds_per_subject=16, max_session_seconds=30
    )
    sprayer, victim = _token("sprayer"), _token("victim")
    url = f"{server.url}/events"
    async with _holding(http) as hold:
        victims_channel = await hold(f"{server.url}/channels/v0/events", token=victim)
        first = await hold(url, channel=[f"s{n}" for n in range(16)], token=sprayer)
        sprays = [
            await hold(url, channel=[f"s{m}-{n}" for n in range(16)], token=sprayer)
            for m in range(2)
        ]
        joined = await hold(url, channel=["s0", "v0"], token=sprayer)  # followed already
        victims = [
            await hold(f"{server.url}/channels/v{n}/events", token=victim) for n in range(1, 9)
        ]
        feeds = set(server.hub.feeds)

    assert (victims_channel.status_code, first.status_code, joined.status_code) == (200,) * 3
    for spray in sprays:
        assert spray.status_code == 429
        assert spray.json()["error"]["code"] == "too_many_feeds"
        assert int(spray.headers["retry-after"]) >= 1
    assert [v.status_code for v in victims] == [200] * 8
    assert feeds == {f"s{n}" for n in range(16)} | {f"v{n}" for n in range(9)}


async def test_without_auth_the_share_is_the_client_address(
    gateway: StartGateway, http: httpx.AsyncClient
) -> None:
    server = gateway(max_sessions_per_subject=2, max_session_seconds=30)
    url = f"{server.url}/channels/c/events"
    elsewhere = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2"))
    async with elsewhere, _holding(http) as hold, _holding(elsewhere) as hold_elsewhere:
        held = [await hold(url), await hold(url)]
        refused = await hold(url)
        other_address = await hold_elsewhere(url)
    assert [r.status_code for r in held] == [200, 200]
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_sessions"
    assert other_address.status_code == 200
    # The sessions ended with the block: their places are free again, once the
    # server has seen the disconnects (a moment after the client closed).
    async with _holding(http) as hold:
        for _ in range(100):
            if (again := await hold(url)).status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert again.status_code == 200
