"""DynamoDB queries per connection-minute: the shared tail loop (one per channel
per process, as under uvicorn) versus one loop per connection (what every
Lambda environment runs, each serving one connection).

The sessions run in this process against moto's server with the default poll
settings; events come from another writer (a separate EventLog, so no in-process
wake-up helps), idle or at one event per second. Only the subscriber side's
queries are counted: head queries at connect plus every poll.

    .venv/bin/python -m bench.queries         # writes bench/results/queries.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time

from bench.common import moto_server, write_result
from gateway.dynamodb import open_dynamodb
from gateway.hub import ChannelHub
from gateway.items import NewEvent
from gateway.session import SessionTiming, event_stream
from gateway.settings import Settings
from gateway.store import EventLog
from infra.local import local_session
from infra.table import ensure_table


async def measure(
    settings: Settings, shared: bool, connections: int, seconds: float, events_per_second: float
) -> dict[str, object]:
    async with (
        open_dynamodb(settings, local_session()) as client,
        open_dynamodb(settings, local_session()) as writer_client,
    ):
        await ensure_table(client, settings.table_name)
        store = EventLog(client, settings.table_name, retention_seconds=3600)
        writer = EventLog(writer_client, settings.table_name, retention_seconds=3600)
        channel = f"q-{time.monotonic_ns()}"

        def new_hub() -> ChannelHub:
            return ChannelHub(
                store,
                poll_min_seconds=settings.poll_min_seconds,
                poll_max_seconds=settings.poll_max_seconds,
                buffer_events=settings.feed_buffer_events,
            )

        shared_hub = new_hub()
        timing = SessionTiming(
            deadline=time.monotonic() + seconds,
            heartbeat_seconds=settings.heartbeat_seconds,
            retry_ms=settings.retry_ms,
        )
        received = 0

        async def session() -> None:
            nonlocal received
            hub = shared_hub if shared else new_hub()
            async for frame in event_stream(channel, None, store=store, hub=hub, timing=timing):
                received += frame.count(b"\ndata:") + frame.startswith(b"data:")

        async def publish() -> None:
            if events_per_second == 0:
                return
            while time.monotonic() < timing.deadline - 1:
                await writer.append(channel, [NewEvent(json.dumps({"t": time.time()}))])
                await asyncio.sleep(1 / events_per_second)

        await asyncio.gather(*(session() for _ in range(connections)), publish())
        minutes = seconds / 60
        return {
            "loop": "shared per channel" if shared else "one per connection",
            "connections": connections,
            "events_per_second": events_per_second,
            "seconds": seconds,
            "queries": store.stats.queries,
            "queries_per_connection_minute": round(store.stats.queries / connections / minutes, 1),
            "deliveries": received,
        }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    rows = []
    with moto_server() as moto:
        settings = Settings(table_name="bench-queries", dynamodb_endpoint_url=moto.url)
        for events_per_second in (0, 1):
            for shared in (True, False):
                row = await measure(
                    settings, shared, args.connections, args.seconds, events_per_second
                )
                rows.append(row)
                print(json.dumps(row))
    write_result("queries", {"settings": settings.model_dump(mode="json"), "rows": rows})


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
