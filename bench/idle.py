"""Idle connections per process and memory per idle connection, sse-gateway and
nchan side by side: RSS growth / N at 1k and 10k open EventSource connections
on one channel, and the CPU the server spends holding them (heartbeats, polls).

    .venv/bin/python -m bench.idle            # writes bench/results/idle.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time

from bench.common import (
    Subscriber,
    Target,
    cpu_seconds,
    gateway,
    hang_up,
    moto_server,
    nchan,
    raise_fd_limit,
    rss_bytes,
    write_result,
)


async def hold(target: Target, steps: list[int], settle: float) -> list[dict[str, object]]:
    subscribers: list[Subscriber] = []
    tasks: list[asyncio.Task[None]] = []
    await asyncio.sleep(settle)
    baseline = rss_bytes(target.pids)
    rows = []
    for n in steps:
        started = time.monotonic()
        while len(subscribers) < n:
            batch = [
                Subscriber(target.base, target.subscribe_path("idle"), lambda data, now: None)
                for _ in range(min(500, n - len(subscribers)))
            ]
            tasks += [asyncio.create_task(s.run()) for s in batch]
            await asyncio.wait_for(asyncio.gather(*(s.connected.wait() for s in batch)), 300)
            subscribers += batch
        connect_seconds = time.monotonic() - started
        await asyncio.sleep(settle)
        cpu_before = cpu_seconds(target.pids)
        await asyncio.sleep(10)
        cpu = cpu_seconds(target.pids) - cpu_before
        rss = rss_bytes(target.pids)
        open_now = sum(not t.done() for t in tasks)
        rows.append(
            {
                "target": target.name,
                "connections": n,
                "still_open": open_now,
                "rss_baseline_mb": round(baseline / 2**20, 1),
                "rss_mb": round(rss / 2**20, 1),
                "kb_per_connection": round((rss - baseline) / n / 1024, 1),
                "idle_cpu_percent": round(100 * cpu / 10, 1),
                "connect_seconds": round(connect_seconds, 1),
            }
        )
        print(json.dumps(rows[-1]))
    await hang_up(subscribers, tasks)
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="1000,10000", help="connection counts, ascending")
    parser.add_argument("--settle", type=float, default=3)
    parser.add_argument(
        "--targets",
        default="sse-gateway,sse-gateway-no-access-log,nchan",
        help="which servers to measure",
    )
    args = parser.parse_args()
    steps = [int(n) for n in args.steps.split(",")]
    raise_fd_limit()
    rows = []
    with moto_server() as moto:
        dynamodb = moto.url
        targets = {
            "sse-gateway": lambda: gateway(dynamodb),
            # As nchan is configured here (access_log off in bench.common.NGINX_CONF).
            "sse-gateway-no-access-log": lambda: gateway(dynamodb, args=["--no-access-log"]),
            "nchan": nchan,
        }
        for name in args.targets.split(","):
            with targets[name]() as target:
                for row in await hold(target, steps, args.settle):
                    rows.append({**row, "target": name})
    write_result("idle", rows)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
