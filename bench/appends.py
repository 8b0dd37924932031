"""Appends per second on one channel, 1 and 8 concurrent publishers: over HTTP to
a gateway process, through the Python API (``EventLog.append``) in this
process, and moto's bare ``PutItem`` with no gateway at all, the ceiling the
embedded store sets.

    .venv/bin/python -m bench.appends         # writes bench/results/appends.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable

import httpx

from bench.common import gateway, moto_server, write_result
from gateway.dynamodb import open_dynamodb
from gateway.items import NewEvent
from gateway.settings import Settings
from gateway.store import EventLog
from infra.local import local_session
from infra.table import ensure_table

Append = Callable[[int], Awaitable[object]]


async def rate(append: Append, publishers: int, seconds: float) -> float:
    done = 0
    deadline = time.monotonic() + seconds

    async def publisher() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await append(done)
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(publisher() for _ in range(publishers)))
    return done / (time.monotonic() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    rows = []
    with moto_server() as moto:
        settings = Settings(table_name="bench-appends", dynamodb_endpoint_url=moto.url)
        async with (
            open_dynamodb(settings, local_session()) as client,
            httpx.AsyncClient(limits=httpx.Limits(max_connections=16)) as http,
        ):
            await ensure_table(client, settings.table_name)
            log = EventLog(client, settings.table_name, retention_seconds=3600)
            with gateway(moto.url, table_name=settings.table_name) as target:
                paths: dict[str, Callable[[str], Append]] = {
                    "HTTP POST to the gateway": lambda channel: (
                        lambda n: target.publish(http, channel, {"n": n})  # type: ignore[return-value]
                    ),
                    "Python API (EventLog.append)": lambda channel: (
                        lambda n: log.append(channel, [NewEvent(json.dumps({"n": n}))])
                    ),
                    "moto PutItem alone (no condition, no gateway)": lambda channel: (
                        lambda n: client.put_item(
                            TableName=settings.table_name,
                            Item={"channel": {"S": channel}, "seq": {"N": str(time.time_ns())}},
                        )
                    ),
                }
                for label, make in paths.items():
                    for publishers in (1, 8):
                        channel = f"a-{time.monotonic_ns()}"
                        per_second = await rate(make(channel), publishers, args.seconds)
                        row = {
                            "path": label,
                            "publishers": publishers,
                            "appends_per_second": round(per_second, 1),
                        }
                        if label.startswith("Python"):
                            page = await log.read_after(channel, 0)
                            row["gapless_from_1"] = [e.seq for e in page.events] == list(
                                range(1, len(page.events) + 1)
                            )
                        rows.append(row)
                        print(json.dumps(row))
    write_result("appends", rows)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
