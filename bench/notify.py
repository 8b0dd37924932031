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
    .venv/bin/python -m bench.notify --parts idle recovery --baseline main --result notify-cpu

``recovery``: subscribers on the notified process, publishes through the other
notified one, Redis killed and started again on its port; how long after the
restart the latency is back within the cross-process targets. ``--baseline``
runs the idle rows for that revision's code too (the feeds' query path and the
safety poll's default are what changed).

Needs Debian's ``redis-server``. Run it on a quiet machine: it measures latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator

import httpx

from bench.appends import revisions
from bench.common import (
    ONE_SUBJECT,
    Subscriber,
    Target,
    cpu_seconds,
    free_port,
    gateway,
    hang_up,
    moto_server,
    percentile,
    raise_fd_limit,
    write_result,
)
from bench.latency import measure

QUERIES = re.compile(r'^sse_gateway_store_requests_total\{operation="query"\} (\S+)$', re.M)


class Redis:
    """A ``redis-server`` on a loopback port of its own, which can be killed and started
    again on the same port (as a cache node restarts)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while (
            subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout[
                :4
            ]
            != b"PONG"
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


@contextlib.contextmanager
def redis_server() -> Iterator[Redis]:
    redis = Redis()
    redis.start()
    try:
        yield redis
    finally:
        redis.kill()


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
    await hang_up(subscribers, tasks)
    return {
        "channels": channels,
        "seconds": round(elapsed, 1),
        "queries_per_channel_minute": round(made / channels / elapsed * 60, 2),
        "gateway_cpu_percent": round(100 * cpu / elapsed, 1),
    }


async def recovery(
    target: Target,
    writer: Target,
    redis: Redis,
    *,
    subscribers: int,
    rate: float,
    seconds: tuple[float, float, float],
) -> dict[str, object]:
    """Publishes through ``writer`` at ``rate`` to ``subscribers`` on ``target``, both
    notified: first an in-process reference (published through ``target``), then
    ``seconds`` = (before, down, after) around Redis killed and started again. The
    recovery is the time from the restart to the start of the first five-second window
    of publishes that meets the cross-process targets (p50 within 1.5x, p99 within 2x
    the reference's); what followed it is reported too."""
    channel = f"recovery-{time.monotonic_ns()}"
    arrived: dict[int, list[float]] = {}
    published: dict[int, float] = {}

    def on_data(data: str, now: float) -> None:
        sent = json.loads(data)
        arrived.setdefault(sent["i"], []).append(now - sent["t"])

    clients = [
        Subscriber(target.base, target.subscribe_path(channel), on_data) for _ in range(subscribers)
    ]
    tasks = [asyncio.create_task(c.run()) for c in clients]
    await asyncio.wait_for(asyncio.gather(*(c.connected.wait() for c in clients)), 60)
    await asyncio.sleep(1)
    before, down, after = seconds
    reference = int(rate * 10)
    async with httpx.AsyncClient(timeout=30) as client:
        for i in range(reference):
            published[i] = time.monotonic()
            await target.publish(client, channel, {"t": published[i], "i": i})
            await asyncio.sleep(1 / rate)
        started = time.monotonic()
        killed = restarted = 0.0
        i = reference
        while (now := time.monotonic()) < started + before + down + after:
            if not killed and now >= started + before:
                redis.kill()
                killed = time.monotonic()
            if killed and not restarted and now >= started + before + down:
                await asyncio.to_thread(redis.start)
                restarted = time.monotonic()
            published[i] = time.monotonic()
            try:
                await writer.publish(client, channel, {"t": published[i], "i": i})
            except httpx.HTTPError:
                del published[i]  # never acknowledged: not expected anywhere
            i += 1
            await asyncio.sleep(1 / rate)
    deadline = time.monotonic() + 15
    while (  # noqa: ASYNC110
        sum(len(v) for v in arrived.values()) < len(published) * subscribers
        and time.monotonic() < deadline
    ):
        await asyncio.sleep(0.1)
    for c in clients:
        c.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    def ms(events: list[int]) -> list[float]:
        return [1000 * x for e in events for x in arrived.get(e, [])]

    ref = ms(list(range(reference)))
    p50_target, p99_target = 1.5 * percentile(ref, 50), 2 * percentile(ref, 99)

    def window(start: float, end: float) -> list[float]:
        return ms([e for e, t in published.items() if start <= t < end])

    windows = []  # five seconds of publishes each, a second apart
    for w in range(max(0, int(after) - 4)):
        got = window(restarted + w, restarted + w + 5)
        if got:
            windows.append((w, percentile(got, 50), percentile(got, 99)))
    recovered = next(
        (w for w, p50, p99 in windows if p50 <= p50_target and p99 <= p99_target), None
    )
    since = window(restarted + (recovered or 0), float("inf")) if recovered is not None else []
    steady = [e for e, t in published.items() if started <= t < killed]
    outage = [e for e, t in published.items() if killed <= t < restarted]
    return {
        "subscribers": subscribers,
        "rate": rate,
        "seconds_before_down_after": list(seconds),
        "deliveries_expected": len(published) * subscribers,
        "deliveries": sum(len(arrived.get(e, [])) for e in published),
        "in_process_p50_ms": round(percentile(ref, 50), 2),
        "in_process_p99_ms": round(percentile(ref, 99), 2),
        "notified_p50_ms": round(percentile(ms(steady), 50), 2),
        "notified_p99_ms": round(percentile(ms(steady), 99), 2),
        "redis_down_p50_ms": round(percentile(ms(outage), 50), 2),
        "redis_down_p99_ms": round(percentile(ms(outage), 99), 2),
        "windows_after_restart_p50_p99_ms": [(w, round(a, 1), round(b, 1)) for w, a, b in windows],
        "recovered_after_seconds": recovered,
        "since_recovered_p50_ms": round(percentile(since, 50), 2) if since else None,
        "since_recovered_p99_ms": round(percentile(since, 99), 2) if since else None,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, nargs="+", default=[20, 1000])
    parser.add_argument("--events", type=int, default=200, help="events per scenario")
    parser.add_argument("--rate", type=float, default=10, help="events per second")
    parser.add_argument("--idle-channels", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=120)
    parser.add_argument("--idle-polling-channels", type=int, default=300)
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=["latency", "idle", "recovery"],
        default=["latency", "idle", "recovery"],
    )
    parser.add_argument("--baseline", metavar="REF", help="the idle rows for this revision too")
    parser.add_argument(
        "--recovery-seconds",
        type=float,
        nargs=3,
        default=[10, 10, 40],
        metavar=("BEFORE", "DOWN", "AFTER"),
    )
    parser.add_argument("--result", default="notify", help="bench/results/<RESULT>.json")
    args = parser.parse_args()
    raise_fd_limit()
    table = f"bench-notify-{time.time_ns()}"
    rows: list[dict[str, object]] = []
    with (
        moto_server() as moto,
        redis_server() as redis,
        revisions(args.baseline) as code,
        contextlib.ExitStack() as stack,
    ):
        settings = {"table_name": table, **ONE_SUBJECT}
        plain = stack.enter_context(gateway(moto.url, **settings))
        plain_writer = stack.enter_context(gateway(moto.url, **settings))
        notified = stack.enter_context(gateway(moto.url, **settings, notify_url=redis.url))
        notified_writer = stack.enter_context(gateway(moto.url, **settings, notify_url=redis.url))
        scenarios = [
            ("in-process publish", plain, plain),
            ("through another process, polling", plain, plain_writer),
            ("through another process, notifier", notified, notified_writer),
        ]
        for subscribers in args.subscribers if "latency" in args.parts else []:
            for label, target, publish in scenarios:
                row = await measure(
                    target, subscribers, 1, args.events, args.rate, publish, moto.pid
                )
                rows.append({"scenario": label, **row})
                print(json.dumps(rows[-1]))
        if "recovery" in args.parts:
            row = await recovery(
                notified,
                notified_writer,
                redis,
                subscribers=args.subscribers[0],
                rate=args.rate,
                seconds=tuple(args.recovery_seconds),
            )
            rows.append({"scenario": "notifier, Redis killed and restarted", **row})
            print(json.dumps(rows[-1]))
        for version, source in code if "idle" in args.parts else []:
            idle_runs = [
                ("idle, polling", args.idle_polling_channels, {}),
                ("idle, notifier", args.idle_channels, {"notify_url": redis.url}),
            ]
            if source is None and args.baseline:  # the default's change apart
                idle_runs.append(
                    (
                        "idle, notifier, 30 s safety poll",
                        args.idle_channels,
                        {"notify_url": redis.url, "notified_poll_seconds": 30},
                    )
                )
            for label, channels, extra in idle_runs:
                with gateway(moto.url, source=source, **settings, **extra) as target:
                    row = await idle(target, channels, args.idle_seconds)
                rows.append({"scenario": label, "code": version, **row})
                print(json.dumps(rows[-1]))
    print(write_result(args.result, {"args": vars(args), "load": os.getloadavg(), "rows": rows}))


if __name__ == "__main__":
    asyncio.run(main())
