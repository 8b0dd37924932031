"""One client held through several server-ended sessions while concurrent
publishers write: every acknowledged event arrives exactly once, in order."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable

import httpx

from gateway.cursor import parse_event_id
from tests.eventstream import EventSourceClient
from tests.servers import GatewayServer

PUBLISHERS = 8
EVENTS_EACH = 50


async def test_resume_across_sessions_loses_and_repeats_nothing(
    gateway: Callable[..., GatewayServer], http: httpx.AsyncClient
) -> None:
    # The subscriber's server and the publishers' server are separate, as a
    # subscribe Lambda and a publish Lambda would be: delivery goes through the log.
    subscriber_side = gateway(max_session_seconds=1.5, retry_ms=20)
    publisher_side = gateway()
    url = f"{subscriber_side.url}/channels/acceptance/events"
    acked: dict[str, tuple[int, int]] = {}

    async def publisher(number: int) -> None:
        rng = random.Random(number)
        for i in range(EVENTS_EACH):
            response = await http.post(
                f"{publisher_side.url}/channels/acceptance/events",
                json={"data": {"publisher": number, "i": i}},
            )
            assert response.status_code == 201, response.text
            (event_id,) = response.json()["ids"]
            acked[event_id] = (number, i)
            await asyncio.sleep(rng.uniform(0.02, 0.18))

    subscriber = EventSourceClient(http, url)
    following = asyncio.create_task(
        subscriber.run(until=lambda events: len(events) >= PUBLISHERS * EVENTS_EACH)
    )
    await asyncio.sleep(0.3)  # the first session has started and reported the head
    await asyncio.gather(*(publisher(n) for n in range(PUBLISHERS)))
    events = await asyncio.wait_for(following, 60)

    received = [e.last_event_id for e in events]
    assert len(received) == len(set(received)) == PUBLISHERS * EVENTS_EACH
    assert set(received) == set(acked)
    seqs = [p.seq for p in map(parse_event_id, received) if p is not None]
    assert seqs == sorted(seqs)
    assert sorted(p.seq for p in map(parse_event_id, acked) if p is not None) == list(
        range(1, PUBLISHERS * EVENTS_EACH + 1)
    )
    assert subscriber.sessions_ended >= 3
    assert subscriber.network_errors == 0
    for event in events:
        publisher_number, i = acked[event.last_event_id]
        assert event.type == "message"
        assert json.loads(event.data) == {"publisher": publisher_number, "i": i}
