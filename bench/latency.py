"""Publish-to-deliver latency, sse-gateway and nchan side by side in one run.

Each event carries the publisher's ``time.monotonic()`` (one clock for every
process on the machine); each subscriber notes when its ``data:`` line arrives.
Scenarios: 1, 100 and 1000 subscribers on one channel, 100 channels x 10. The
gateway runs twice, on asyncio + h11 (uvicorn's pure-Python stack) and on
uvloop + httptools (its default when installed).

The floor of any design that stores an event before delivering it: nchan, each
event first appended to the log by this process through the Python API (the
same conditional put on the same store as the gateway's). The gateway's ratio
to it is what the gateway adds; its ratio to nchan is what the store costs.

    .venv/bin/python -m bench.latency          # writes bench/results/latency.json
                                               # and bench/latency.png

``--baseline REF`` also runs the gateway code of git revision ``REF`` (on
uvloop + httptools), beside this tree's, on the same store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx

from bench.common import (
    ONE_SUBJECT,
    ROOT,
    Subscriber,
    Target,
    checkout,
    cpu_seconds,
    free_port,
    gateway,
    gateway_publish,
    hang_up,
    moto_server,
    nchan,
    percentile,
    raise_fd_limit,
    running,
    wait_http,
    write_result,
)
from gateway.dynamodb import open_dynamodb
from gateway.items import NewEvent
from gateway.settings import Settings
from gateway.store import EventLog
from infra.local import local_session
from infra.table import ensure_table

SCENARIOS = ["1x1", "100x1", "1000x1", "10x100"]  # subscribers per channel x channels


async def measure(
    target: Target,
    per_channel: int,
    channels: int,
    events: int,
    rate: float,
    publish: Target,
    moto_pid: int,
    warmup: int = 0,
) -> dict[str, object]:
    run = f"{target.name}-{time.monotonic_ns()}".replace(" ", "")
    names = [f"{run}-{n}" for n in range(channels)]
    latencies: list[float] = []
    warmed = [0]

    def on_data(data: str, now: float) -> None:
        event = json.loads(data)
        if "warm" in event:
            warmed[0] += 1
        else:
            latencies.append(now - event["t"])

    async def publish_all(count: int, what: str) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            for i in range(count):
                await publish.publish(client, names[i % channels], {"t": time.monotonic(), what: i})
                await asyncio.sleep(1 / rate)

    async def delivered(count: int, seen: Callable[[], int]) -> None:
        deadline = time.monotonic() + 15
        while seen() < count and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)

    subscribers = [
        Subscriber(target.base, target.subscribe_path(name), on_data)
        for name in names
        for _ in range(per_channel)
    ]
    tasks = []
    for start in range(0, len(subscribers), 100):  # connect in waves, as browsers arrive
        batch = subscribers[start : start + 100]
        tasks += [asyncio.create_task(s.run()) for s in batch]
        await asyncio.wait_for(asyncio.gather(*(s.connected.wait() for s in batch)), 60)
    await asyncio.sleep(1)
    # Warm-up events, not counted: every session has had frames (the gateway's have
    # attached to their feed) before the first measured event, as before every later one.
    await publish_all(warmup, "warm")
    await delivered(warmup * per_channel, lambda: warmed[0])
    # This process reads every delivery: a collection of its heap would pause the
    # reading of all of them, which would show as the measured server's latency.
    gc.collect()
    gc.disable()
    try:
        # Where the time goes: CPU of the servers and of the embedded DynamoDB.
        watched = {"server": target.pids, "dynamodb": [moto_pid] if target.name != "nchan" else []}
        cpu_before = {name: cpu_seconds(pids) for name, pids in watched.items()}
        started = time.monotonic()
        await publish_all(events, "i")
        elapsed = time.monotonic() - started
        cpu = {
            f"{name}_cpu_percent": round(100 * (cpu_seconds(pids) - cpu_before[name]) / elapsed)
            for name, pids in watched.items()
        }
        expected = events * per_channel
        await delivered(expected, lambda: len(latencies))
        # The server's CPU for the whole delivery, however late it ends: what a frame
        # costs, which a busy machine's scheduling does not blur as it does latency.
        per_delivery = (cpu_seconds(target.pids) - cpu_before["server"]) / max(1, len(latencies))
    finally:
        gc.enable()
        await hang_up(subscribers, tasks)
    ms = [1000 * x for x in latencies]
    return {
        "subscribers_per_channel": per_channel,
        "channels": channels,
        "events": events,
        "warmup_events": warmup,
        "warmup_deliveries": warmed[0],
        "deliveries_expected": expected,
        "deliveries": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2),
        **cpu,
        "server_cpu_us_per_delivery": round(1e6 * per_delivery, 1),
    }


@contextlib.asynccontextmanager
async def stored_first(hub: Target, dynamodb: str) -> AsyncIterator[Target]:
    """``hub`` (nchan), each event appended to the log before it is published."""
    settings = Settings(table_name=f"bench-floor-{time.time_ns()}", dynamodb_endpoint_url=dynamodb)
    async with open_dynamodb(settings, local_session()) as dynamo:
        await ensure_table(dynamo, settings.table_name)
        log = EventLog.for_settings(dynamo, settings)

        async def publish(
            client: httpx.AsyncClient, channel: str, data: dict[str, object]
        ) -> object:
            await log.append(channel, [NewEvent(json.dumps(data))])
            return await hub.publish(client, channel, data)

        yield replace(hub, name="nchan, stored first", publish=publish)


@contextlib.contextmanager
def stored_first_elsewhere(hub: Target, dynamodb: str) -> Iterator[Target]:
    """``hub`` (nchan), each event appended to the log by a process of its own first
    (``bench/floor.py``), as the gateway's appends run in the gateway's process."""
    port = free_port()
    command = [sys.executable, "-m", "bench.floor", "--port", str(port), "--nchan", hub.base]
    command += ["--dynamodb", dynamodb, "--table", f"bench-floor-{time.time_ns()}"]
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    env["AWS_DEFAULT_REGION"] = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    with running(command, env, ROOT) as process:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/channels/warmup/events")
        pids = [*hub.pids, process.pid]
        publish = gateway_publish(base)  # the floor answers as the gateway's API does
        yield replace(hub, name="nchan, stored first elsewhere", pids=pids, publish=publish)


@contextlib.asynccontextmanager
async def targets(
    dynamodb: str, with_nchan: bool, baseline: str | None
) -> AsyncIterator[list[tuple[str, Target, Target]]]:
    """(label, where subscribers connect, where events are published)."""
    table = f"bench-latency-{time.time_ns()}"
    # A publish through another process (a separate publish Lambda) reaches the
    # subscribers' process through the log: its tail loop's next poll.
    async with contextlib.AsyncExitStack() as stack:
        plain = stack.enter_context(
            gateway(
                dynamodb,
                args=["--loop", "asyncio", "--http", "h11"],
                table_name=table,
                **ONE_SUBJECT,
            )
        )
        fast = stack.enter_context(gateway(dynamodb, table_name=table, **ONE_SUBJECT))
        elsewhere = stack.enter_context(gateway(dynamodb, table_name=table, **ONE_SUBJECT))
        found = [
            ("sse-gateway, asyncio + h11", plain, plain),
            ("sse-gateway, uvloop + httptools", fast, fast),
            ("sse-gateway, uvloop + httptools, published via another process", fast, elsewhere),
        ]
        if baseline is not None:
            old = stack.enter_context(
                gateway(
                    dynamodb,
                    source=stack.enter_context(checkout(baseline)),
                    table_name=table,
                    **ONE_SUBJECT,
                )
            )
            found.append((f"sse-gateway {baseline}, uvloop + httptools", old, old))
        if with_nchan:
            hub = stack.enter_context(nchan())
            floor = await stack.enter_async_context(stored_first(hub, dynamodb))
            apart = stack.enter_context(stored_first_elsewhere(hub, dynamodb))
            found += [
                ("nchan", hub, hub),
                ("nchan, each event first appended to the log", floor, floor),
                ("nchan, each event first appended by a process of its own", apart, apart),
            ]
        yield found


def plot(rows: list[dict[str, object]], scenarios: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(str(r["target"]) for r in rows))  # in order of appearance
    figure, axes = plt.subplots(figsize=(10, 4.8))
    width = 0.8 / len(labels)
    for k, label in enumerate(labels):
        mine = {
            f"{r['subscribers_per_channel']}x{r['channels']}": r
            for r in rows
            if r["target"] == label
        }
        xs = [i + k * width for i in range(len(scenarios))]
        p50 = [float(str(mine[s]["p50_ms"])) for s in scenarios]
        p99 = [float(str(mine[s]["p99_ms"])) for s in scenarios]
        axes.bar(xs, p99, width, alpha=0.35, color=f"C{k}")
        axes.bar(xs, p50, width, label=label, color=f"C{k}")
    axes.set_yscale("log")
    axes.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(scenarios))])
    axes.set_xticklabels([s.replace("x", " subs x ") + " ch" for s in scenarios])
    axes.set_ylabel("publish → deliver latency, ms (log)")
    axes.set_title("p50 (solid) and p99 (light) per scenario")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200, help="events per scenario")
    parser.add_argument("--rate", type=float, default=20, help="events per second")
    parser.add_argument(
        "--warmup", type=int, default=20, help="events before each row's, not counted"
    )
    parser.add_argument("--no-nchan", action="store_true", help="without nginx + nchan")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=SCENARIOS)
    parser.add_argument("--baseline", metavar="REF", help="git revision to compare against")
    parser.add_argument(
        "--targets",
        nargs="+",
        metavar="LABEL",
        help="only the targets whose label is one of these (default: all)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every scenario")
    parser.add_argument("--output", default="latency", help="name of the JSON in bench/results")
    args = parser.parse_args()
    raise_fd_limit()
    rows = []
    with moto_server() as moto:
        async with targets(moto.url, not args.no_nchan, args.baseline) as servers:
            chosen = [s for s in servers if args.targets is None or s[0] in args.targets]
            for round_ in range(1, args.repeat + 1):
                for scenario in args.scenarios:
                    per_channel, channels = map(int, scenario.split("x"))
                    for label, subscribed, published in chosen:
                        row = await measure(
                            subscribed,
                            per_channel,
                            channels,
                            args.events,
                            args.rate,
                            published,
                            moto.pid,
                            args.warmup,
                        )
                        row.update(target=label, round=round_, loadavg=os.getloadavg())
                        rows.append(row)
                        print(json.dumps(row))
    result = {"events": args.events, "rate": args.rate, "warmup": args.warmup, "rows": rows}
    write_result(args.output, result)
    if args.repeat == 1:
        plot(rows, args.scenarios, Path(__file__).parent / "latency.png")


if __name__ == "__main__":
    asyncio.run(main())
