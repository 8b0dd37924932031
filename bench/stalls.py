"""Where a late event waits: the garbage collections of the gateway, of the
embedded DynamoDB and of the load generator, and what the threads of the first
two run, each with the time it happened, beside every event's latency, over a
sequence of bench.latency's rows on one gateway process and one store.

    .venv/bin/python -m bench.stalls --rows 1x1 1000x1 1x1 1x1   # bench/results/stalls.json

Each event of a row later than ``--late`` ms is listed with its publish's round
trip, the collections that ran while it was in flight, and the busy stacks a
sampler thread took in each server process every 2 ms over the same window (the
three innermost frames, by count; a thread waiting in its event loop or selector
is idle). The load generator collects nothing while a row is measured, as in
bench.latency, unless ``--generator-gc``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import (
    ONE_SUBJECT,
    ROOT,
    Subscriber,
    free_port,
    gateway,
    hang_up,
    percentile,
    raise_fd_limit,
    running,
    wait_http,
    write_result,
)

# Run first in the gateway's and the embedded DynamoDB's processes: every garbage
# collection, and a stack sample of every busy thread every 2 ms, with their
# monotonic times (one clock for every process of the machine); SIGUSR1 writes
# them out and starts afresh.
RECORDER = """
import gc, json, os, signal, sys, threading, time, traceback
collections_, samples, started = [], [], [0.0]
def timed(phase, info):
    if phase == "start":
        started[0] = time.monotonic()
    else:
        collections_.append([started[0], time.monotonic() - started[0], info["generation"],
                             info["collected"]])
gc.callbacks.append(timed)
def sample():
    me = threading.get_ident()
    while True:
        time.sleep(0.002)
        now = time.monotonic()
        for ident, frame in sys._current_frames().items():
            stack = ["%s:%d:%s" % (f.filename.rsplit("/", 2)[-1], f.lineno, f.name)
                     for f in traceback.extract_stack(frame)[-8:]]
            if ident != me and not stack[-1].startswith({idle!r}):
                samples.append([now, stack])
threading.Thread(target=sample, daemon=True).start()
def dump(*_):
    with open({path!r} + ".part", "w") as out:
        json.dump({{"collections": collections_, "samples": samples}}, out)
    os.replace({path!r} + ".part", {path!r})
    collections_.clear()
    samples.clear()
signal.signal(signal.SIGUSR1, dump)
"""
GATEWAY = "from gateway.cli import main\nsys.exit(main(sys.argv[1:]))\n"
DYNAMODB = 'sys.argv = ["infra.local", "--port", "{port}"]\nfrom infra.local import main\nmain()\n'
# Where a thread waits for work: not what a late event waits for.
IDLE = ("selectors.py:", "threading.py:", "queue.py:", "runners.py:")


async def row(
    base: str, subscribers_count: int, events: int, rate: float
) -> tuple[list[list[float]], dict[float, float]]:
    """[publish time, latency] of every delivery of ``events`` to ``subscribers_count``,
    and each publish's round trip by its publish time."""
    channel = f"stalls-{time.monotonic_ns()}"
    deliveries: list[list[float]] = []
    round_trips: dict[float, float] = {}

    def on_data(data: str, now: float) -> None:
        event = json.loads(data)
        if "t" in event:
            deliveries.append([event["t"], now - event["t"]])

    subscribers = [
        Subscriber(base, f"/channels/{channel}/events", on_data) for _ in range(subscribers_count)
    ]
    tasks = []
    for start in range(0, len(subscribers), 100):
        batch = subscribers[start : start + 100]
        tasks += [asyncio.create_task(s.run()) for s in batch]
        await asyncio.wait_for(asyncio.gather(*(s.connected.wait() for s in batch)), 60)
    await asyncio.sleep(1)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for i in range(20):  # warm-up, not counted
            await client.post(f"/channels/{channel}/events", json={"data": {"warm": i}})
            await asyncio.sleep(1 / rate)
        for i in range(events):
            payload = {"data": {"t": time.monotonic(), "i": i}}
            (await client.post(f"/channels/{channel}/events", json=payload)).raise_for_status()
            round_trips[payload["data"]["t"]] = time.monotonic() - payload["data"]["t"]
            await asyncio.sleep(1 / rate)
    deadline = time.monotonic() + 15
    while len(deliveries) < events * subscribers_count and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    await hang_up(subscribers, tasks)
    return deliveries, round_trips


def window(trace: dict[str, list[list[object]]], began: float, ended: float) -> dict[str, object]:
    """``trace``'s collections and busy stack samples (3 innermost frames, by count)
    between ``began`` and ``ended``."""
    frames: collections.Counter[str] = collections.Counter()
    for at, stack in trace["samples"]:
        if began <= at <= ended and not stack[-1].startswith(IDLE):  # type: ignore
            frames[" < ".join(reversed(stack[-3:]))] += 1  # type: ignore[index]
    return {
        "collections": [
            {"generation": c[2], "ms": round(1000 * c[1], 1), "collected": c[3]}  # type: ignore
            for c in trace["collections"]
            if began <= c[0] <= ended  # type: ignore[operator]
        ],
        "busy_samples": sum(frames.values()),
        "frames": frames.most_common(5),
    }


def explain(
    deliveries: list[list[float]],
    round_trips: dict[float, float],
    traces: dict[str, dict[str, list[list[object]]]],
    late_ms: float,
) -> list[dict[str, object]]:
    """Each event with a delivery later than ``late_ms``, with what every traced
    process did while it was in flight."""
    worst: dict[float, float] = {}
    for published, latency in deliveries:
        worst[published] = max(worst.get(published, 0.0), latency)
    return [
        {
            "published": round(published, 3),
            "latency_ms": round(1000 * latency, 1),
            "publish_round_trip_ms": round(1000 * round_trips.get(published, 0.0), 1),
            **{
                name: window(trace, published, published + latency)
                for name, trace in traces.items()
            },
        }
        for published, latency in sorted(worst.items())
        if 1000 * latency >= late_ms
    ]


async def measure_rows(
    specs: list[str],
    events: int,
    late_ms: float,
    base: str,
    pids: dict[str, int],
    paths: dict[str, Path],
    generator_gc: bool,
) -> list[dict[str, object]]:
    async def dump() -> dict[str, dict[str, list[list[object]]]]:
        for name, pid in pids.items():
            paths[name].unlink(missing_ok=True)
            os.kill(pid, signal.SIGUSR1)
        while not all(path.exists() for path in paths.values()):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        return {name: json.loads(path.read_text()) for name, path in paths.items()}

    # This process's own collections too, where --generator-gc leaves them on (off,
    # as in bench.latency, they cannot delay the reading of a delivery).
    generator: list[list[object]] = []
    started = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.monotonic()
        else:
            generator.append([started[0], time.monotonic() - started[0], info["generation"], 0])

    gc.callbacks.append(timed)
    results = []
    for spec in specs:
        await dump()  # forget what came before
        generator.clear()
        if not generator_gc:
            gc.collect()
            gc.disable()
        try:
            deliveries, round_trips = await row(base, int(spec.split("x")[0]), events, 20)
        finally:
            gc.enable()
        traces = {**await dump(), "load generator": {"collections": generator, "samples": []}}
        ms = [1000 * latency for _, latency in deliveries]
        result = {
            "row": spec,
            "deliveries": len(ms),
            "p50_ms": round(percentile(ms, 50), 2),
            "p99_ms": round(percentile(ms, 99), 2),
            "max_ms": round(max(ms), 2),
            "full_collections_ms": {
                name: [round(1000 * c[1], 1) for c in t["collections"] if c[2] == 2]  # type: ignore
                for name, t in traces.items()
            },
            "late_events": explain(deliveries, round_trips, traces, late_ms),
            "loadavg": os.getloadavg(),
        }
        print(json.dumps({k: v for k, v in result.items() if k != "late_events"}))
        for late in result["late_events"][:6]:  # type: ignore[index]
            print("   ", json.dumps(late))
        results.append(result)
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=["1x1", "1000x1", "1x1", "1x1"])
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--late", type=float, default=25.0, help="ms")
    parser.add_argument("--generator-gc", action="store_true", help="collect in the load generator")
    parser.add_argument("--output", default="stalls")
    args = parser.parse_args()
    raise_fd_limit()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"gateway": Path(tmp) / "gateway.json", "dynamodb": Path(tmp) / "dynamodb.json"}
        port = free_port()
        dynamodb = f"http://127.0.0.1:{port}"
        recorder = {
            name: RECORDER.format(path=str(path), idle=IDLE) for name, path in paths.items()
        }
        moto_code = recorder["dynamodb"] + DYNAMODB.format(port=port)
        with running([sys.executable, "-c", moto_code], cwd=ROOT) as moto:
            wait_http(dynamodb)
            gateway_code = recorder["gateway"] + GATEWAY
            with gateway(dynamodb, code=gateway_code, **ONE_SUBJECT) as target:
                pids = {"gateway": target.pids[0], "dynamodb": moto.pid}
                results = await measure_rows(
                    args.rows, args.events, args.late, target.base, pids, paths, args.generator_gc
                )
    write_result(args.output, results)


if __name__ == "__main__":
    asyncio.run(main())
