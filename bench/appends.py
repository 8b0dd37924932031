"""Appends per second on one channel, 1, 8 and 32 concurrent publishers: through the
Python API (``EventLog.append``), over HTTP to a gateway process, and moto's bare
``PutItem`` with no gateway at all, the ceiling the embedded store sets.

With ``--baseline REF`` the gateway code of git revision ``REF`` runs beside this
tree's, alternating row by row on one moto server, so before and after are
compared in one run. The Python API runs in a process of its own per row (so each
revision imports its own ``gateway``); each revision serves HTTP from a gateway
process of its own.

    .venv/bin/python -m bench.appends --baseline main --repeat 3
    # writes bench/results/appends.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import (
    Poster,
    Target,
    checkout,
    cpu_seconds,
    gateway,
    moto_server,
    py_spy,
    python_module,
    write_result,
)
from gateway.dynamodb import open_dynamodb
from gateway.items import NewEvent
from gateway.settings import Settings
from gateway.store import EventLog
from infra.local import local_session
from infra.table import ensure_table

Append = Callable[[int], Awaitable[object]]
TABLE = "bench-appends"
PROFILE_RATE = 250  # samples per second


async def rate(
    appenders: list[Append], seconds: float, watched: dict[str, list[int]]
) -> dict[str, float]:
    """Appends per second with one publisher per appender, each awaiting its append
    before the next; and the CPU share of one core each watched process used."""
    done = 0
    deadline = time.monotonic() + seconds

    async def publisher(append: Append) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await append(done)
            done += 1

    cpu = {name: cpu_seconds(pids) for name, pids in watched.items()}
    started = time.monotonic()
    await asyncio.gather(*(publisher(append) for append in appenders))
    elapsed = time.monotonic() - started
    return {
        "appends_per_second": round(done / elapsed, 1),
        **{
            f"{name}_cpu_percent": round(100 * (cpu_seconds(pids) - cpu[name]) / elapsed)
            for name, pids in watched.items()
        },
    }


async def python_api(
    endpoint: str,
    channel: str,
    publishers: int,
    seconds: float,
    moto_pid: int,
    profile: str | None = None,
) -> dict[str, object]:
    """One row of the Python API, in this process: the rate, how many appends a
    write carried, and whether the log came out gapless from seq 1; with
    ``profile``, py-spy's samples of the appending there (``bench/profile.py``)."""
    settings = Settings(table_name=TABLE, dynamodb_endpoint_url=endpoint)
    async with open_dynamodb(settings, local_session()) as client:
        log = EventLog.for_settings(client, settings)

        def append(n: int) -> Awaitable[object]:
            return log.append(channel, [NewEvent(json.dumps({"n": n}))])

        watched = {"publisher": [os.getpid()], "moto": [moto_pid]}
        sampling = py_spy(Path(profile), PROFILE_RATE) if profile else contextlib.nullcontext()
        with sampling:
            row: dict[str, object] = {**await rate([append] * publishers, seconds, watched)}
        writes = log.stats.writes
        seqs: list[int] = []
        after, more = 0, True
        while more:
            page = await log.read_after(channel, after)
            seqs += [e.seq for e in page.events]
            after, more = page.scanned_to, page.more
    row["appends_per_write"] = round(len(seqs) / writes, 2)
    row["gapless_from_1"] = seqs == list(range(1, len(seqs) + 1))
    return row


def python_api_in(source: Path | None, *job: object) -> dict[str, object]:
    """``python_api`` in a process of its own that imports ``source``'s gateway."""
    python, cwd, env = python_module("bench.appends", source)
    output = subprocess.run(
        [*python, "--row", json.dumps(job)],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    row: dict[str, object] = json.loads(output)
    return row


async def http(target: Target, publishers: int, seconds: float, moto_pid: int) -> dict[str, float]:
    path = f"/channels/http-{time.monotonic_ns()}/events"
    posters = [Poster(target.base) for _ in range(publishers)]

    def poster(p: Poster) -> Append:
        return lambda n: p.post(path, {"data": {"n": n}})

    try:
        watched = {"gateway": target.pids, "moto": [moto_pid]}
        return await rate([poster(p) for p in posters], seconds, watched)
    finally:
        for p in posters:
            p.close()


@contextlib.contextmanager
def revisions(baseline: str | None) -> Iterator[list[tuple[str, Path | None]]]:
    """(label, source) of the code under test: the baseline's checkout, then this tree."""
    if baseline is None:
        yield [("this tree", None)]
        return
    with checkout(baseline) as old:
        yield [(f"before ({baseline})", old), ("after", None)]


@contextlib.contextmanager
def servers(
    dynamodb: str, code: list[tuple[str, Path | None]]
) -> Iterator[list[tuple[str, Target]]]:
    """A gateway process per revision on one stack, asyncio + httptools (the
    baseline's own default once httptools is installed), so they differ only in
    the gateway's code; and this tree on its default stack, uvloop + httptools."""
    same_stack = ["--loop", "asyncio", "--http", "httptools"]
    with contextlib.ExitStack() as stack:
        targets = [
            (
                label,
                stack.enter_context(
                    gateway(
                        dynamodb, source=source, args=[] if source else same_stack, table_name=TABLE
                    )
                ),
            )
            for label, source in code
        ]
        targets.append(("after, uvloop", stack.enter_context(gateway(dynamodb, table_name=TABLE))))
        yield targets


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--publishers", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--baseline", metavar="REF", help="git revision to compare against")
    parser.add_argument("--repeat", type=int, default=1, help="rounds, for ranges")
    args = parser.parse_args()
    rows: list[dict[str, object]] = []

    def record(path: str, code: str, round_: int, publishers: int, row: dict[str, Any]) -> None:
        rows.append({"path": path, "code": code, "round": round_, "publishers": publishers, **row})
        print(json.dumps(rows[-1]), flush=True)

    with (
        moto_server() as moto,
        revisions(args.baseline) as code,
        servers(moto.url, code) as targets,
    ):
        settings = Settings(table_name=TABLE, dynamodb_endpoint_url=moto.url)
        async with open_dynamodb(settings, local_session()) as client:
            await ensure_table(client, TABLE)

            def put(n: int) -> Awaitable[object]:
                item = {"channel": {"S": "put"}, "seq": {"N": str(time.time_ns())}}
                return client.put_item(TableName=TABLE, Item=item)

            for round_ in range(args.repeat):
                for publishers in args.publishers:
                    for label, source in code:
                        channel = f"api-{time.monotonic_ns()}"
                        job = (moto.url, channel, publishers, args.seconds, moto.pid)
                        record("Python API", label, round_, publishers, python_api_in(source, *job))
                    for label, target in targets:
                        row = await http(target, publishers, args.seconds, moto.pid)
                        record("HTTP POST", label, round_, publishers, row)
                    row = await rate([put] * publishers, args.seconds, {"moto": [moto.pid]})
                    record(
                        "moto PutItem alone (no condition, no gateway)", "", round_, publishers, row
                    )
    write_result("appends", {"seconds": args.seconds, "baseline": args.baseline, "rows": rows})


if __name__ == "__main__":
    if sys.argv[1:2] == ["--row"]:  # one Python API row, in a process of its own
        print(json.dumps(asyncio.run(python_api(*json.loads(sys.argv[2])))))
    else:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main())
