"""Push, not poll: cross-process delivery with and without the notifier, side by side.

Subscribers connect to one ``sse-gateway dev`` process; events are published
through the same process (in-process hand-over), through a second process on
the same store (polling only: the subscribers' feed reads the log at its next
poll), and through a second process with both on one ``redis-server``
(``SSE_GATEWAY_NOTIFY_URL``). Then idle channels, one subscriber each, held on
one process with and without the notifier: the queries its feeds make (its own
``/metrics``) and its CPU, per channel per minute.

    .venv/bin/python -m bench.notify                    # writes bench/results/notify.json
    .venv/bin/python -m bench.notify --subscribers 20 1000 --idle-channels 1000

Needs Debian's ``redis-server``. Run it on a quiet machine: it measures latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import subprocess
import time
from collections.abc import Iterator

import httpx

from bench.common import (
    Subscriber,
    Target,
    cpu_seconds,
    free_port,
    gateway,
    moto_server,
    raise_fd_limit,
    write_result,
)
from bench.latency import measure

QUERIES = re.compile(r'^sse_gateway_store_requests_total\{operation="query"\} (\S+)$', re.M)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while (
            subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout[:4]
            != b"PONG"
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait()


async def queries(client: httpx.AsyncClient, target: Target) -> float:
    match = QUERIES.search((await client.get(f"{target.base}/metrics")).text)
    return float(match[1]) if match else 0.0


async def idle(target: Target, channels: int, seconds: float) -> dict[str, object]:
    """``channels`` channels with one idle subscriber each, held ``seconds``."""
    run = f"idle-{time.monotonic_ns()}"
    subscribers = [
        Subscriber(target.base, target.subscribe_path(f"{run}-{n}"), lambda data, now: None)
        for n in range(channels)
    ]
    tasks = []
    for start in range(0, channels, 100):
        batch = subscribers[start : start + 100]
        tasks += [asyncio.create_task(s.run()) for s in batch]
        await asyncio.wait_for(asyncio.gather(*(s.connected.wait() for s in batch)), 120)
    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.sleep(5)  # the feeds subscribed and read once
        before, cpu_before, started = (
            await queries(client, target),
            cpu_seconds(target.pids),
            time.monotonic(),
        )
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - started
        made = await queries(client, target) - before
        cpu = cpu_seconds(target.pids) - cpu_before
    for subscriber in subscribers:
        subscriber.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "channels": channels,
        "seconds": round(elapsed, 1),
        "queries_per_channel_minute": round(made / channels / elapsed * 60, 2),
        "gateway_cpu_percent": round(100 * cpu / elapsed, 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, nargs="+", default=[20, 1000])
    parser.add_argument("--events", type=int, default=200, help="events per scenario")
    parser.add_argument("--rate", type=float, default=10, help="events per second")
    parser.add_argument("--idle-channels", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=120)
    args = parser.parse_args()
    raise_fd_limit()
    table = f"bench-notify-{time.time_ns()}"
    rows: list[dict[str, object]] = []
    with moto_server() as moto, redis_server() as redis, contextlib.ExitStack() as stack:
        plain = stack.enter_context(gateway(moto.url, table_name=table))
        plain_writer = stack.enter_context(gateway(moto.url, table_name=table))
        notified = stack.enter_context(gateway(moto.url, table_name=table, notify_url=redis))
        notified_writer = stack.enter_context(gateway(moto.url, table_name=table, notify_url=redis))
        scenarios = [
            ("in-process publish", plain, plain),
            ("through another process, polling", plain, plain_writer),
            ("through another process, notifier", notified, notified_writer),
        ]
        for subscribers in args.subscribers:
            for label, target, publish in scenarios:
                row = await measure(
                    target, subscribers, 1, args.events, args.rate, publish, moto.pid
                )
                rows.append({"scenario": label, **row})
                print(json.dumps(rows[-1]))
        for label, target in (("idle, polling", plain), ("idle, notifier", notified)):
            rows.append(
                {"scenario": label, **await idle(target, args.idle_channels, args.idle_seconds)}
            )
            print(json.dumps(rows[-1]))
    print(write_result("notify", {"args": vars(args), "rows": rows}))


if __name__ == "__main__":
    asyncio.run(main())
