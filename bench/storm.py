"""A connect storm on a cold channel, sse-gateway and nchan side by side: N
EventSource connections opened at once (not in batches) to a channel with a log
but no running feed, on a server process that has just started.

Per target and round: the store queries the storm cost (the gateway's
``/metrics``), the connect rate (N over the time until every connection has its
first bytes), the peak RSS during the storm (sampled every 10 ms), the RSS
growth per connection once the storm has settled, and one event published
after it, counted at every connection. Rounds alternate the targets, each on
fresh processes; the load average (``/proc/loadavg``) is noted per row.

    .venv/bin/python -m bench.storm                   # writes bench/results/storm.json
    .venv/bin/python -m bench.storm --baseline main   # main's gateway beside this tree's

``--tracemalloc PATH`` instead runs one storm on this tree's gateway under
tracemalloc and writes the top allocation sites of the growth (a snapshot diff
from before the storm to after it) to PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from bench.common import (
    ONE_SUBJECT,
    Subscriber,
    Target,
    checkout,
    gateway,
    hang_up,
    moto_server,
    nchan,
    raise_fd_limit,
    rss_bytes,
    write_result,
)

CHANNEL = "storm"


def _queries(target: Target) -> float | None:
    if target.name == "nchan":
        return None
    text = httpx.get(f"{target.base}/metrics").text
    for line in text.splitlines():
        if line.startswith('sse_gateway_store_requests_total{operation="query"}'):
            return float(line.split()[-1])
    return 0.0


async def storm(target: Target, n: int, settle: float) -> dict[str, object]:
    async with httpx.AsyncClient(timeout=30) as client:
        await target.publish(client, CHANNEL, {"before": True})  # a log, no feed
    await asyncio.sleep(settle)
    baseline = rss_bytes(target.pids)
    queries_before = _queries(target)
    received = [0]

    def on_data(data: str, now: float) -> None:
        received[0] += "after" in data  # nchan also replays the event before

    subscribers = [
        Subscriber(target.base, target.subscribe_path(CHANNEL), on_data) for _ in range(n)
    ]
    peak = baseline
    started = time.monotonic()
    tasks = [asyncio.create_task(s.run()) for s in subscribers]
    deadline = started + 120
    # Until every connection has its first bytes (or has failed: counted below).
    while not all(
        s.connected.is_set() or t.done() for s, t in zip(subscribers, tasks, strict=True)
    ):
        peak = max(peak, rss_bytes(target.pids))
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    connect_seconds = time.monotonic() - started
    settled_at = time.monotonic() + settle
    while time.monotonic() < settled_at:
        peak = max(peak, rss_bytes(target.pids))
        await asyncio.sleep(0.01)
    rss = rss_bytes(target.pids)
    queries_after = _queries(target)
    async with httpx.AsyncClient(timeout=30) as client:
        await target.publish(client, CHANNEL, {"after": True})
    still_open = sum(not t.done() for t in tasks)
    deadline = time.monotonic() + 30
    while received[0] < n and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await hang_up(subscribers, tasks)
    return {
        "connections": n,
        "failed": sum(not s.connected.is_set() for s in subscribers),
        "still_open_at_publish": still_open,
        "deliveries_after": received[0],
        "store_queries": None
        if queries_before is None or queries_after is None
        else queries_after - queries_before,
        "connect_seconds": round(connect_seconds, 2),
        "connects_per_second": round(n / connect_seconds),
        "rss_baseline_mb": round(baseline / 2**20, 1),
        "rss_peak_mb": round(peak / 2**20, 1),
        "rss_after_mb": round(rss / 2**20, 1),
        "kb_per_connection": round((rss - baseline) / n / 1024, 1),
        "peak_kb_per_connection": round((peak - baseline) / n / 1024, 1),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def _targets(
    dynamodb: str, baseline: str | None
) -> dict[str, Callable[[], contextlib.AbstractContextManager[Target]]]:
    found: dict[str, Callable[[], contextlib.AbstractContextManager[Target]]] = {
        "sse-gateway": lambda: gateway(dynamodb, **ONE_SUBJECT),
        "nchan": nchan,
    }
    if baseline is not None:

        @contextlib.contextmanager
        def old() -> Iterator[Target]:
            with (
                checkout(baseline) as source,
                gateway(dynamodb, source=source, **ONE_SUBJECT) as target,
            ):
                yield target

        found[f"sse-gateway {baseline}"] = old
    return found


async def traced(dynamodb: str, n: int, settle: float, output: Path) -> None:
    """One storm on this tree's gateway, traced by tracemalloc from just before it
    (tracing from the start would slow the start past its timeout): what is still
    allocated after it, by site, per connection."""
    snapshot = output.with_suffix(".snap")
    wrapper = (
        "import signal, sys, tracemalloc\n"
        "def toggle(*_):\n"
        "    if not tracemalloc.is_tracing():\n"
        "        tracemalloc.start(8)\n"
        "    else:\n"
        f"        tracemalloc.take_snapshot().dump({str(snapshot)!r})\n"
        "signal.signal(signal.SIGUSR1, toggle)\n"
        "from gateway.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    with gateway(dynamodb, code=wrapper, **ONE_SUBJECT) as target:
        async with httpx.AsyncClient(timeout=30) as client:
            await target.publish(client, CHANNEL, {"before": True})
        await asyncio.sleep(settle)
        os.kill(target.pids[0], signal.SIGUSR1)
        await asyncio.sleep(1)
        path = f"/channels/{CHANNEL}/events"
        subscribers = [Subscriber(target.base, path, lambda d, t: None) for _ in range(n)]
        tasks = [asyncio.create_task(s.run()) for s in subscribers]
        await asyncio.gather(*(s.connected.wait() for s in subscribers))
        await asyncio.sleep(settle)
        os.kill(target.pids[0], signal.SIGUSR1)
        for _ in range(600):
            await asyncio.sleep(0.1)
            with contextlib.suppress(Exception):
                after = tracemalloc.Snapshot.load(str(snapshot))
                break
        else:
            raise RuntimeError("the gateway wrote no snapshot")
        for group in ("lineno", "traceback"):
            stats = after.statistics(group)
            total = sum(s.size for s in stats) / n
            lines = [f"{n} connections, by {group}: {total:.0f} B per connection still allocated"]
            for stat in stats[:30]:
                lines.append(f"{stat.size / n:8.0f} B/conn {stat.count / n:6.2f} blocks/conn")
                frames = stat.traceback.format()
                lines += [
                    f"      {frame}" for frame in (frames[-8:] if group == "traceback" else frames)
                ]
            text = "\n".join(lines) + "\n"
            output.with_name(f"{output.stem}-{group}.txt").write_text(text)
            print(text)
        await hang_up(subscribers, tasks)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=3)
    parser.add_argument("--baseline", metavar="REF", help="git revision to run beside this tree")
    parser.add_argument("--tracemalloc", type=Path, metavar="PATH")
    args = parser.parse_args()
    raise_fd_limit()
    with moto_server() as moto:
        if args.tracemalloc is not None:
            await traced(moto.url, args.connections, args.settle, args.tracemalloc)
            return
        rows = []
        for round_ in range(args.rounds):
            for name, make in _targets(moto.url, args.baseline).items():
                with make() as target:
                    row = {
                        "target": name,
                        "round": round_ + 1,
                        **await storm(target, args.connections, args.settle),
                    }
                rows.append(row)
                print(json.dumps(row))
    write_result("storm", {"connections": args.connections, "rows": rows})


if __name__ == "__main__":
    asyncio.run(main())
