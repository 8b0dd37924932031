"""Held-seconds per connection-hour, and what they cost in delivery latency, for a
channel that publishes one event a minute: sessions always held, against idle
release (SSE_GATEWAY_IDLE_SESSION_SECONDS with SSE_GATEWAY_IDLE_RETRY_MS).

On Lambda a connection is billed for every second it is held, so held-seconds
per connection-hour is the cost. Time runs ``--speedup`` times faster than real
(settings, publish interval and retry all scaled), and results are quoted in
real seconds.

    .venv/bin/python -m bench.duty_cycle      # writes bench/results/duty_cycle.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time

import httpx

from bench.common import gateway, moto_server, percentile, write_result

# (name, idle session seconds, idle retry seconds), in real time
MODES = [
    ("always held", None, None),
    ("idle 30 s, retry 60 s", 30, 60),
    ("idle 30 s, retry 15 s", 30, 15),
]


async def _client(
    base: str, channel: str, stop: float, held: list[float], got: dict[str, float]
) -> None:
    last_event_id = ""
    async with httpx.AsyncClient(timeout=None) as http:
        while time.monotonic() < stop:
            retry_ms = 0
            started = time.monotonic()
            headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
            async with http.stream(
                "GET", f"{base}/channels/{channel}/events", headers=headers
            ) as r:
                async for line in r.aiter_lines():
                    if line.startswith("id: "):
                        last_event_id = line[4:]
                    elif line.startswith("data: "):
                        got.setdefault(line[6:], time.monotonic())
                    elif line.startswith("retry: "):
                        retry_ms = int(line[7:])
            held.append(min(time.monotonic(), stop) - started)  # within the window
            await asyncio.sleep(retry_ms / 1000)


async def measure(speedup: float, clients: int, hours: float) -> list[dict[str, object]]:
    rows = []
    with moto_server() as moto:
        for name, idle, idle_retry in MODES:
            settings: dict[str, object] = {
                "max_session_seconds": 600 / speedup,  # a 10-minute session
                "retry_ms": round(1000 / speedup),
                "heartbeat_seconds": 15 / speedup,
                "session_jitter": 0.1,
                "poll_min_seconds": 0.1 / speedup,
                "poll_max_seconds": 1 / speedup,
            }
            if idle is not None and idle_retry is not None:
                settings["idle_session_seconds"] = idle / speedup
                settings["idle_retry_ms"] = round(idle_retry * 1000 / speedup)
            with gateway(moto.url, **settings) as target:
                wall = 3600 * hours / speedup
                stop = time.monotonic() + wall
                held: list[list[float]] = [[] for _ in range(clients)]
                got: list[dict[str, float]] = [{} for _ in range(clients)]
                tasks = [
                    asyncio.create_task(_client(target.base, "minutely", stop, held[i], got[i]))
                    for i in range(clients)
                ]
                sent: dict[str, float] = {}
                await asyncio.sleep(1)  # every client connected before the first event
                async with httpx.AsyncClient() as http:
                    n = 0
                    while time.monotonic() < stop - 60 / speedup:
                        sent[f'{{"n":{n}}}'] = time.monotonic()
                        await target.publish(http, "minutely", {"n": n})
                        n += 1
                        await asyncio.sleep(60 / speedup)
                await asyncio.gather(*tasks)
            lags = [
                (got[i][data] - at) * speedup
                for i in range(clients)
                for data, at in sent.items()
                if data in got[i]
            ]
            rows.append(
                {
                    "mode": name,
                    "held_seconds_per_connection_hour": round(
                        sum(map(sum, held)) / clients / hours * speedup
                    ),
                    "events": len(sent),
                    "delivered": len(lags),
                    "lag_p50_seconds": round(percentile(lags, 50), 1),
                    "lag_p99_seconds": round(percentile(lags, 99), 1),
                    "lag_max_seconds": round(max(lags), 1),
                }
            )
            print(rows[-1], flush=True)
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speedup", type=float, default=60, help="simulated seconds per second")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--hours", type=float, default=1, help="simulated hours per mode")
    args = parser.parse_args()
    write_result("duty_cycle", await measure(args.speedup, args.clients, args.hours))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
