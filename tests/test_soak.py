"""Soak: the log's promise with everything happening at once.

Three gateway processes share one table on an embedded DynamoDB that serves one
request at a time (so each operation is atomic, as DynamoDB's are); one of them
reaches it through a proxy that loses responses (botocore retries them, the
store recognises its own writes). Six publishers write single events, batches,
and idempotent publishes whose answers they sometimes throw away and send
again. A TTL task deletes expired items late and in random order. Twice the
publishers fall silent for longer than the retention, so the whole log expires
and later appends open new epochs. Ten subscribers with short sessions
reconnect to any of the three processes; three of them sometimes stay away
past the retention, and another is refused at first (its first session ends
with a store error before it holds an id, and the overload ``retry:`` keeps it
away past the retention: it comes back as a new subscriber).

Checked for every subscriber: no event twice; events in the real-time order of
their publishes; every acknowledged event published once it held an id (a
session that fails before reading the head leaves it none) either delivered,
or skipped by a reset in its very place that came after the event had
expired; every reset names a position that had expired. Each is followed
until it has got a sentinel published after the rest (one every few seconds:
one may expire before a subscriber away on a ``retry:`` comes back). And
globally: no id ever stood for two events, every publish is stored once, and
each acknowledged id holds what was published.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from gateway.dynamodb import open_dynamodb
from gateway.items import IDEMPOTENCY_SEPARATOR, decode_batch
from gateway.settings import Settings
from infra.local import embedded_dynamodb, local_session
from tests.eventstream import EventStreamParser
from tests.servers import FaultProxy, GatewayProcess

RETENTION = 5
QUIET = RETENTION + 2.5  # long enough for the whole log to expire
WRITE_WINDOW = 3  # attempts x 2 x timeout + backoff, from the settings below
SLACK = 0.5  # seconds between a server's clock reading and the test's
OVERLOAD_RETRY_MS = 15_000  # after a store error: longer than the retention


@dataclass(frozen=True)
class Published:
    event_id: str
    data: str
    sent_at: float
    acked_at: float


@dataclass(frozen=True)
class Received:
    type: str
    event_id: str
    data: str
    at: float


@dataclass
class Stored:
    """What the TTL task saw in the table: each id's data and expiry."""

    events: dict[str, tuple[str, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def record(self, item: dict[str, Any]) -> None:
        if IDEMPOTENCY_SEPARATOR in item["channel"]["S"]:
            return  # an idempotency record
        batch = decode_batch(item)
        for event in batch.events:
            seen = self.events.setdefault(event.event_id, (event.data, batch.expires_at))
            if seen[0] != event.data:
                self.problems.append(f"id {event.event_id} stood for {seen[0]} and {event.data}")


class Publisher:
    def __init__(
        self, name: str, http: httpx.AsyncClient, urls: list[str], seed: int, **kind: bool
    ) -> None:
        self.name = name
        self.acked: list[Published] = []
        self.problems: list[str] = []
        self.replays = 0
        self.abandoned = 0
        self._http = http
        self._urls = urls
        self._rng = random.Random(seed)
        self._batches = kind.get("batches", False)
        self._keyed = kind.get("keyed", False)
        self._throw_away_next = self._keyed  # the first answer always: a repeat for sure

    async def run(self, publishing: asyncio.Event, done: asyncio.Event) -> None:
        for n in itertools.count():
            while not publishing.is_set():
                if done.is_set():
                    return
                await asyncio.sleep(0.05)
            count = self._rng.randint(2, 4) if self._batches else 1
            datas = [f"{self.name}.{n}.{i}" for i in range(count)]
            sent_at = time.time()
            ids = await self._publish({"events": [{"data": d} for d in datas]}, f"{self.name}.{n}")
            if ids is not None:
                acked_at = time.time()
                self.acked += [
                    Published(i, json.dumps(d), sent_at, acked_at)
                    for i, d in zip(ids, datas, strict=True)
                ]
            await asyncio.sleep(self._rng.uniform(0.05, 0.2))

    async def _publish(self, body: Any, key: str) -> list[str] | None:
        headers = {"Idempotency-Key": key} if self._keyed else {}
        thrown_away: list[str] | None = None
        first_sent = time.time()
        # A key protects repeats for the retention from the first write; a repeat
        # must also finish its own write window inside it (2 x 2 x 0.5 s + 1 s).
        while time.time() < first_sent + RETENTION - WRITE_WINDOW - SLACK:
            try:
                response = await self._http.post(
                    f"{self._rng.choice(self._urls)}/channels/soak/events",
                    json=body,
                    headers=headers,
                )
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code == 201:
                ids: list[str] = response.json()["ids"]
                if thrown_away is not None:
                    self.replays += 1
                    if ids != thrown_away or "idempotent-replayed" not in response.headers:
                        self.problems.append(f"{key}: a repeat answered {ids}, not {thrown_away}")
                    return ids
                if self._keyed and (self._throw_away_next or self._rng.random() < 0.3):
                    self._throw_away_next = False
                    thrown_away = ids  # as if the answer was lost: publish again
                    continue
                return ids
            if response is not None and response.status_code != 503:
                self.problems.append(f"{key}: {response.status_code} {response.text}")
                return None
            if not self._keyed:
                return None  # outcome unknown and not acknowledged: the publisher moves on
            await asyncio.sleep(0.1)
        self.abandoned += 1  # past the key's window: the outcome stays unknown
        return None


class Subscriber:
    def __init__(
        self,
        name: str,
        http: httpx.AsyncClient,
        urls: list[str],
        seed: int,
        wanders: bool,
        first_url: str | None = None,
    ) -> None:
        self.name = name
        self.received: list[Received] = []
        # When it first held an id (a fresh session's first frame): a session that
        # ended before reading the head (a store error) left it none, and it comes
        # back as a new subscriber; what was published before is not owed to it.
        self.arrived_at = 0.0
        self.first_answered = asyncio.Event()
        self.network_errors = 0
        self.back = asyncio.Event()  # cleared while it is kept away (see keep_away)
        self.back.set()
        self._http = http
        self._urls = urls
        self._rng = random.Random(seed)
        self._wanders = wanders
        self._first_url = first_url
        self._last_event_id = ""

    async def run(self, done: asyncio.Event, sentinels: set[str]) -> None:
        while not sentinels.intersection(r.event_id for r in self.received):
            parser = EventStreamParser()
            parser.last_event_id = parser._id_buffer = self._last_event_id
            headers = {"Last-Event-ID": self._last_event_id} if self._last_event_id else {}
            url = f"{self._first_url or self._rng.choice(self._urls)}/channels/soak/events"
            self._first_url = None
            try:
                async with self._http.stream("GET", url, headers=headers) as response:
                    assert response.status_code == 200, response.status_code
                    async for chunk in response.aiter_raw():
                        for event in parser.feed(chunk):
                            self.received.append(
                                Received(event.type, event.last_event_id, event.data, time.time())
                            )
                        self._last_event_id = parser.last_event_id
                        if self._last_event_id and not self.arrived_at:
                            self.arrived_at = time.time()
            except httpx.TransportError:
                self.network_errors += 1
            self._last_event_id = parser.last_event_id
            self.first_answered.set()
            await asyncio.sleep((parser.retry or 100) / 1000)
            await self.back.wait()
            if self._wanders and not done.is_set() and self._rng.random() < 0.1:
                # Away past the retention: its position may be gone when it returns.
                await asyncio.wait([asyncio.ensure_future(done.wait())], timeout=RETENTION + 1.5)


async def expire_like_ttl(
    settings: Settings, stored: Stored, seed: int, stop: asyncio.Event
) -> None:
    """Delete expired items late and in any order, recording every item first. TTL's
    worst order is the newest first (the log's end regresses), so often it is that."""
    rng = random.Random(seed)
    async with open_dynamodb(settings, local_session()) as client:
        while True:
            items: list[dict[str, Any]] = []
            async for page in client.get_paginator("scan").paginate(TableName=settings.table_name):
                items += page["Items"]
            for item in items:
                stored.record(item)
            if stop.is_set():
                return
            now = time.time()
            expired = [item for item in items if int(item["expires_at"]["N"]) <= now]
            expired.sort(key=lambda item: int(item["seq"]["N"]))
            for _ in range(min(len(expired), 2)):
                item = expired.pop(-1 if rng.random() < 0.6 else rng.randrange(len(expired)))
                key = {"channel": item["channel"], "seq": item["seq"]}
                await client.delete_item(TableName=settings.table_name, Key=key)
            await asyncio.sleep(0.2)


async def keep_away(subscriber: Subscriber, leave_at: float, back_at: float) -> None:
    """Away from ``leave_at`` (its session then ends within MAX_SESSION_SECONDS) to
    ``back_at`` seconds from now: away from mid-stretch until the log started over,
    its position has expired whatever the seed, so it must get a reset."""
    await asyncio.sleep(leave_at)
    subscriber.back.clear()
    await asyncio.sleep(back_at - leave_at)
    subscriber.back.set()


async def lose_responses(proxy: FaultProxy, seed: int, stop: asyncio.Event) -> None:
    """Now and then one response is lost on its way back; botocore's retry gets through."""
    rng = random.Random(seed)
    while not stop.is_set():
        if not proxy.drops_pending:
            proxy.drop_response_once(rng.choice(["putitem", "transactwriteitems", "query"]))
        await asyncio.sleep(0.4)


async def test_soak_every_subscriber_gets_every_event_once_in_order_or_a_reset_in_its_place(
    http: httpx.AsyncClient, request: pytest.FixtureRequest
) -> None:
    chosen: int | None = request.config.getoption("--soak-seed")
    seed = random.randrange(1 << 30) if chosen is None else chosen
    print(f"soak seed {seed} (run it again with: pytest tests/test_soak.py --soak-seed {seed})")
    env = {
        "SSE_GATEWAY_TABLE_NAME": "soak-events",
        "SSE_GATEWAY_RETENTION_SECONDS": str(RETENTION),
        # A write lands within 2 x 2 x 0.5 s + 1 s of backoff = 3 s, inside the retention.
        "SSE_GATEWAY_DYNAMODB_MAX_ATTEMPTS": "2",
        "SSE_GATEWAY_DYNAMODB_TIMEOUT_SECONDS": "0.5",
        "SSE_GATEWAY_MAX_SESSION_SECONDS": "1.5",
        "SSE_GATEWAY_HEARTBEAT_SECONDS": "0.5",
        "SSE_GATEWAY_RETRY_MS": "100",
        "SSE_GATEWAY_OVERLOAD_RETRY_MS": str(OVERLOAD_RETRY_MS),
        "SSE_GATEWAY_POLL_MIN_SECONDS": "0.05",
        "SSE_GATEWAY_POLL_MAX_SECONDS": "0.2",
    }
    with embedded_dynamodb(serialized=True) as endpoint, FaultProxy(endpoint) as proxy:
        gateways = [
            GatewayProcess(endpoint, env).start(),
            GatewayProcess(endpoint, env).start(),
            GatewayProcess(proxy.url, env).start(),
        ]
        try:
            stored, outcome = await _run(http, gateways, endpoint, proxy, seed)
        finally:
            for gateway in gateways:
                gateway.kill()
    _check(stored, *outcome)


async def _run(
    http: httpx.AsyncClient,
    gateways: list[GatewayProcess],
    endpoint: str,
    proxy: FaultProxy,
    seed: int,
) -> tuple[Stored, tuple[list[Publisher], list[Subscriber]]]:
    urls = [gateway.url for gateway in gateways]
    publishing, done, stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
    sentinels: set[str] = set()
    stored = Stored()
    # The TTL task's own client: patient, as it is not under test (a scan of the
    # serialized table can wait behind the gateways' requests on a busy machine).
    settings = Settings(
        table_name="soak-events",
        dynamodb_endpoint_url=endpoint,
        retention_seconds=3600,
        dynamodb_max_attempts=5,
        dynamodb_timeout_seconds=10,
    )
    publishers = [
        Publisher(f"p{i}", http, urls, seed + i, batches=i in (2, 3), keyed=i in (4, 5))
        for i in range(6)
    ]
    # s3's first session goes through the proxy while it refuses connections.
    subscribers = [
        Subscriber(
            f"s{i}", http, urls, seed + 10 + i, wanders=i < 3, first_url=urls[2] if i == 3 else None
        )
        for i in range(10)
    ]
    background = [
        asyncio.create_task(expire_like_ttl(settings, stored, seed, stop)),
        asyncio.create_task(lose_responses(proxy, seed, stop)),
    ]
    proxy.refuse = True
    following = [asyncio.create_task(s.run(done, sentinels)) for s in subscribers]
    await subscribers[3].first_answered.wait()
    proxy.refuse = False
    publishing_tasks = [asyncio.create_task(p.run(publishing, done)) for p in publishers]
    # Leaves 1.5 s into the first stretch (4 s), back 1 s into the second.
    background.append(asyncio.create_task(keep_away(subscribers[0], 1 + 1.5, 1 + 4 + QUIET + 1)))
    await asyncio.sleep(1)
    # Quiet stretches past the retention: the whole log expires, and TTL is part way
    # through deleting it (newest first, often) when publishing resumes.
    for quiet in (QUIET, QUIET + 1.5, 0.0):
        publishing.set()
        await asyncio.sleep(4)
        publishing.clear()
        await asyncio.sleep(quiet)
    done.set()
    await asyncio.gather(*publishing_tasks)
    await _until_every_subscriber_got_a_sentinel(http, urls[0], sentinels, subscribers, following)
    stop.set()
    await asyncio.gather(*background)
    return stored, (publishers, subscribers)


async def _until_every_subscriber_got_a_sentinel(
    http: httpx.AsyncClient,
    url: str,
    sentinels: set[str],
    subscribers: list[Subscriber],
    following: list[asyncio.Task[None]],
) -> None:
    """Publish sentinels, one every few seconds, until every subscriber has got one:
    it has then read past every acknowledged event. A subscriber away on a store
    error's ``retry:`` may come back after one expired; it finds the next (after a
    reset). Any one is away for at most OVERLOAD_RETRY_MS and a session at a time."""
    deadline = time.monotonic() + 4 * OVERLOAD_RETRY_MS / 1000
    for n in itertools.count():
        response = await http.post(f"{url}/channels/soak/events", json={"data": f"sentinel.{n}"})
        if response.status_code == 201:  # else the next one (a loaded store can time out)
            sentinels.add(response.json()["ids"][0])
        _, pending = await asyncio.wait(following, timeout=RETENTION - WRITE_WINDOW)
        if not pending:
            await asyncio.gather(*following)  # what a subscriber raised, if one did
            return
        assert time.monotonic() < deadline, "no sentinel reached " + ", ".join(
            f"{s.name} (last got {s.received[-3:]})"
            for s, task in zip(subscribers, following, strict=True)
            if not task.done()
        )


def _check(stored: Stored, publishers: list[Publisher], subscribers: list[Subscriber]) -> None:
    problems = stored.problems + [p for publisher in publishers for p in publisher.problems]
    acked = {e.event_id: e for publisher in publishers for e in publisher.acked}
    assert len(acked) == sum(len(p.acked) for p in publishers), "two publishes got one id"
    for event in acked.values():
        if stored.events.get(event.event_id, (event.data,))[0] != event.data:
            problems.append(f"{event.event_id} was acknowledged for {event.data}")
        if event.event_id not in stored.events:
            problems.append(f"{event.event_id} was acknowledged and never stored")
    by_data: dict[str, set[str]] = {}
    for event_id, (data, _expiry) in stored.events.items():
        by_data.setdefault(data, set()).add(event_id)
    problems += [f"{data} stored as {ids}" for data, ids in by_data.items() if len(ids) > 1]

    resets = delivered = 0
    for subscriber in subscribers:
        stream = subscriber.received
        messages = [(index, r) for index, r in enumerate(stream) if r.type == "message"]
        delivered += len(messages)
        ids = [r.event_id for _, r in messages]
        if len(ids) != len(set(ids)):
            twice = next(i for i in ids if ids.count(i) > 1)
            at = [n for n, r in enumerate(stream) if r.event_id == twice]
            window = [
                (r.type, r.event_id, r.data if r.type == "reset" else "")
                for r in stream[max(0, at[0] - 3) : at[-1] + 2]
            ]
            problems.append(f"{subscriber.name} got {twice} twice: {window}")
        latest_sent = 0.0
        for _, r in messages:
            if stored.events.get(r.event_id, (r.data,))[0] != r.data:
                problems.append(f"{subscriber.name} got {r.event_id} as {r.data}")
            if (event := acked.get(r.event_id)) is not None:
                if latest_sent > event.acked_at:
                    problems.append(f"{subscriber.name} got {r.event_id} out of order")
                latest_sent = max(latest_sent, event.sent_at)
        got = set(ids)
        for event in acked.values():
            owed = event.sent_at > subscriber.arrived_at and event.event_id not in got
            if owed and (window := _missed_without_reset(stream, messages, event, acked, stored)):
                problems.append(f"{subscriber.name} missed {event.event_id}, got: {window}")
        for r in stream:
            if r.type == "reset":
                resets += 1
                lost = json.loads(r.data)["last_event_id"]
                if lost in stored.events and stored.events[lost][1] > r.at + SLACK:
                    problems.append(f"{subscriber.name} was reset from {lost}, not expired yet")
    print(
        f"soak: {len(acked)} acknowledged events, {len(stored.events)} stored, "
        f"{len({i.split('-')[0] for i in stored.events})} epochs, {delivered} deliveries, "
        f"{resets} resets, {sum(p.replays for p in publishers)} idempotent repeats, "
        f"{sum(p.abandoned for p in publishers)} abandoned keys"
    )
    assert not problems, "\n".join(problems[:20])
    # What every seed does: each keyed publisher repeats its first publish; the
    # subscriber kept away (keep_away) is reset; the one refused at first held no
    # id until it came back, after the first events.
    assert all(p.replays > 0 for p in publishers if p.name in ("p4", "p5"))
    assert len({i.split("-")[0] for i in stored.events}) >= 3  # the log started over twice
    assert any(r.type == "reset" for r in subscribers[0].received)
    first_event = min(e.sent_at for e in acked.values())
    assert subscribers[3].arrived_at > first_event


def _missed_without_reset(
    stream: list[Received],
    messages: list[tuple[int, Received]],
    event: Published,
    acked: dict[str, Published],
    stored: Stored,
) -> str:
    """What the subscriber got where ``event`` belonged, unless that holds a reset
    received once ``event`` had expired (then "")."""
    before = [
        i for i, r in messages if r.event_id in acked and acked[r.event_id].acked_at < event.sent_at
    ]
    after = [
        i for i, r in messages if r.event_id in acked and acked[r.event_id].sent_at > event.acked_at
    ]
    low, high = max(before, default=-1), min(after, default=len(stream))
    expiry = stored.events[event.event_id][1] if event.event_id in stored.events else 0
    if any(r.type == "reset" and r.at + SLACK >= expiry for r in stream[low + 1 : high]):
        return ""
    return (
        " ".join(
            f"{r.type}:{r.event_id}@{r.at:.2f}" + (f"{r.data}" if r.type == "reset" else "")
            for r in stream[max(low - 1, 0) : high + 2]
        )
        + f" (sent {event.sent_at:.2f}, acked {event.acked_at:.2f}, expires {expiry})"
    )
