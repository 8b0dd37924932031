"""The garbage collector's pauses in the gateway while 1000 subscribers of one
channel take 200 events (bench.latency's 1000 x 1 scenario), by generation:
each collection timed in the gateway process itself (``gc.callbacks``).

    .venv/bin/python -m bench.gc_pauses --baseline e4b89ae   # bench/results/gc-pauses.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.common import (
    ONE_SUBJECT,
    Target,
    checkout,
    gateway,
    moto_server,
    raise_fd_limit,
    write_result,
)
from bench.latency import measure

# Run instead of ``-m gateway.cli``: times every collection; SIGUSR1 writes them out.
WRAPPER = """
import gc, json, signal, sys, time
pauses, started = [], [0.0]
def timed(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        pauses.append([info["generation"], 1000 * (time.perf_counter() - started[0])])
gc.callbacks.append(timed)
def dump(*_):
    with open({path!r}, "w") as out:
        json.dump(pauses, out)
    pauses.clear()
signal.signal(signal.SIGUSR1, dump)
from gateway.cli import main
sys.exit(main(sys.argv[1:]))
"""


async def pauses_during(target: Target, moto_pid: int, path: Path, rounds: int) -> list[object]:
    rows: list[object] = []
    for _ in range(rounds):
        os.kill(target.pids[0], signal.SIGUSR1)  # forget what came before
        await asyncio.sleep(0.5)
        row = await measure(target, 1000, 1, 200, 20, target, moto_pid)
        os.kill(target.pids[0], signal.SIGUSR1)
        await asyncio.sleep(0.5)
        pauses = json.loads(path.read_text())  # noqa: ASYNC240
        by_generation = {
            g: sorted(round(ms, 1) for gen, ms in pauses if gen == g) for g in (0, 1, 2)
        }
        rows.append(
            {
                "p50_ms": row["p50_ms"],
                "p99_ms": row["p99_ms"],
                "deliveries": row["deliveries"],
                "collections": {g: len(ms) for g, ms in by_generation.items()},
                "longest_ms": {g: ms[-1] if ms else 0 for g, ms in by_generation.items()},
                "full_collections_ms": by_generation[2],
                "loadavg": os.getloadavg(),
            }
        )
        print(json.dumps(rows[-1]))
    return rows


@contextlib.contextmanager
def source_of(ref: str | None) -> Iterator[Path | None]:
    if ref is None:
        yield None
    else:
        with checkout(ref) as root:
            yield root


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", metavar="REF", help="git revision to run beside this tree")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    raise_fd_limit()
    results = {}
    with moto_server() as moto, tempfile.TemporaryDirectory() as tmp:
        for ref in [None, args.baseline] if args.baseline else [None]:
            path = Path(tmp) / "pauses.json"
            code = WRAPPER.format(path=str(path))
            with (
                source_of(ref) as source,
                gateway(moto.url, source=source, code=code, **ONE_SUBJECT) as target,
            ):
                results[ref or "this tree"] = await pauses_during(
                    target, moto.pid, path, args.rounds
                )
    write_result("gc-pauses", results)


if __name__ == "__main__":
    asyncio.run(main())
