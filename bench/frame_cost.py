"""Instructions per delivered frame in the gateway process, with 1000 subscribers of
one channel attached to its feed: the fan-out path from the feed having a frame to
``transport.write``, through uvicorn's real send, before (``--baseline REF``) and after.

The gateway (``sse-gateway dev``, uvloop + httptools, metrics on) runs under
valgrind's callgrind, its subscribers and its publisher in this process, moto in
a process of its own. Each event is published through the gateway's HTTP API and
the next one only once every subscriber has it, as the latency benchmark's events
come one at a time. A pass, on a channel of its own, counts
(``callgrind_control --zero`` / ``--dump`` around ``--events`` publishes, after
a warm-up):
- with 1 subscriber: a publish and its one frame;
- with 1 + ``--subscribers``: the same publishes and ``--subscribers`` more frames
  each. The difference over the extra frames is the **marginal cost of a
  delivered frame** (everything the gateway does per session per frame), the
  figure the comparison rests on, repeatable on a loaded machine (instructions,
  not time). The whole count over all deliveries is what a frame costs with the
  publish's share: what ``bench.latency`` calls CPU per frame.
``--passes`` run one after the other in one process, as ``bench.latency``'s
rounds do (does a later one cost more?); then an idle window of ``--idle``
seconds says what the process spends per second on nothing (uvicorn's ticks),
which a run under valgrind, slow as it is, also counts. The kernel's part of a
write (the socket send) is outside what callgrind counts.

    .venv/bin/python -m bench.frame_cost --baseline main   # bench/results/frame-cost.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from bench.appends import revisions
from bench.common import (
    ONE_SUBJECT,
    Poster,
    Subscriber,
    Target,
    gateway,
    moto_server,
    raise_fd_limit,
    write_result,
)

# Nothing on a timer while counting: no feed poll, heartbeat or session end in a run.
QUIET = {
    "poll_min_seconds": 3600,
    "poll_max_seconds": 3600,
    "heartbeat_seconds": 3600,
    "max_session_seconds": 86_400,
    "keep_alive_seconds": 300,
}


class Counted:
    """The gateway process under callgrind: counts zeroed and dumped on demand."""

    def __init__(self, pid: int, out: Path) -> None:
        self._pid = str(pid)
        self._out = out

    def _control(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, self._pid], check=True, capture_output=True)

    def instrument(self) -> None:
        self._control("--instr=on")

    def zero(self) -> None:
        self._control("--zero")

    def dump(self) -> tuple[int, Path]:
        """Instructions since the last zero, and the dump's file."""
        self._control("--dump")
        dumps = self._out.parent.glob(self._out.name + ".*")
        newest = max(dumps, key=lambda p: int(p.suffix[1:]))
        text = newest.read_text()
        found = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
        assert found is not None, newest
        return int(found[1]), newest


class Audience:
    """Subscribers of one channel, and how many frames they have had in all."""

    def __init__(self, target: Target, channel: str) -> None:
        self._target = target
        self._channel = channel
        self.subscribers: list[Subscriber] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.frames = 0

    def _on_data(self, data: str, now: float) -> None:
        self.frames += 1

    async def grow(self, count: int) -> None:
        path = self._target.subscribe_path(self._channel)
        for start in range(0, count, 100):
            batch = [
                Subscriber(self._target.base, path, self._on_data)
                for _ in range(min(100, count - start))
            ]
            self.subscribers += batch
            self._tasks += [asyncio.create_task(s.run()) for s in batch]
            await asyncio.wait_for(asyncio.gather(*(s.connected.wait() for s in batch)), 600)

    async def take(self, poster: Poster, events: int) -> None:
        """``events`` publishes, each once every subscriber has the one before."""
        for i in range(events):
            expected = self.frames + len(self.subscribers)
            await poster.post(f"/channels/{self._channel}/events", {"data": {"i": i}})
            deadline = time.monotonic() + 600
            while self.frames < expected:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{expected - self.frames} frames never came")
                await asyncio.sleep(0.02)

    async def close(self) -> None:
        for subscriber in self.subscribers:
            subscriber.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def own_instructions(dump: Path) -> dict[str, int]:
    """callgrind_annotate's own (exclusive) instructions per function in ``dump``."""
    out = subprocess.run(
        ["callgrind_annotate", "--threshold=100", str(dump)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    own: dict[str, int] = {}
    for line in out.splitlines():
        found = re.match(r"\s*([\d,]+) \([\s\d.]+%\)\s+(\S.*)$", line)
        if found and "PROGRAM TOTALS" not in line:
            # "file:function [object]", short: the function and the object's name.
            where, _, obj = found[2].partition(" [")
            name = where.rsplit(":", 1)[-1] + " (" + Path(obj.rstrip("]")).name + ")"
            own[name] = own.get(name, 0) + int(found[1].replace(",", ""))
    return own


def marginal_functions(alone: Path, crowd: Path, per: int, limit: int = 30) -> list[object]:
    """Per function, the instructions the crowd's dump has over the lone
    subscriber's, divided by ``per`` (the extra frames): where a frame's cost goes."""
    before, after = own_instructions(alone), own_instructions(crowd)
    extra = {name: (count - before.get(name, 0)) / per for name, count in after.items()}
    ranked = sorted(extra.items(), key=lambda item: -item[1])
    return [[name, round(count, 1)] for name, count in ranked[:limit]]


@contextlib.contextmanager
def counted_gateway(
    dynamodb: str, source: Path | None, tmp: Path
) -> Iterator[tuple[Target, Counted]]:
    out = tmp / f"callgrind-{uuid.uuid4().hex[:6]}.out"
    wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    with gateway(
        dynamodb, source=source, wrapper=wrapper, start_timeout=900, **ONE_SUBJECT, **QUIET
    ) as target:
        counted = Counted(target.pids[0], out)
        counted.instrument()
        yield target, counted


async def one_pass(
    target: Target, counted: Counted, subscribers: int, events: int
) -> dict[str, object]:
    """A channel of its own: 1 subscriber counted, then 1 + ``subscribers``; all leave."""
    audience = Audience(target, f"frames-{uuid.uuid4().hex[:8]}")
    poster = Poster(target.base)
    try:
        await audience.grow(1)
        await audience.take(poster, 5)  # warm: the feed runs, the session attached
        counted.zero()
        await audience.take(poster, events)
        alone, alone_dump = counted.dump()
        await audience.grow(subscribers)
        await audience.take(poster, 5)
        counted.zero()
        await audience.take(poster, events)
        crowd, crowd_dump = counted.dump()
    finally:
        poster.close()
        await audience.close()
    extra = subscribers * events
    return {
        "instructions_per_frame": round((crowd - alone) / extra),
        "instructions_per_frame_with_publish": round(crowd / ((subscribers + 1) * events)),
        "instructions_per_publish_alone": round(alone / events),
        "callgrind": {"one subscriber": alone, "crowd": crowd},
        "functions_per_frame": marginal_functions(alone_dump, crowd_dump, extra),
    }


async def measure(
    dynamodb: str,
    source: Path | None,
    tmp: Path,
    subscribers: int,
    events: int,
    passes: int,
    idle: float,
) -> dict[str, object]:
    """``passes`` one after the other in one gateway process (as ``bench.latency``'s
    rounds are: does a frame cost more in a later one?), then the idle window."""
    with counted_gateway(dynamodb, source, tmp) as (target, counted):
        done = [await one_pass(target, counted, subscribers, events) for _ in range(passes)]
        await asyncio.sleep(1)  # the last pass's connections closed
        counted.zero()
        await asyncio.sleep(idle)
        quiet, _ = counted.dump()
    # Where the frames' instructions go, from the first pass.
    functions = done[0]["functions_per_frame"]
    for row in done:
        del row["functions_per_frame"]
    return {
        "instructions_per_frame": [row["instructions_per_frame"] for row in done],
        "passes": done,
        "idle_instructions_per_second": round(quiet / idle),
        "functions_per_frame": functions,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", metavar="REF", help="git revision to run beside this tree")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=20, help="counted publishes per phase")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each revision, alternating")
    parser.add_argument("--passes", type=int, default=3, help="passes in each run's process")
    parser.add_argument("--idle", type=float, default=10, help="seconds of the idle window")
    parser.add_argument("--output", default="frame-cost")
    args = parser.parse_args()
    raise_fd_limit()
    rows = []
    with (
        moto_server() as moto,
        revisions(args.baseline) as code,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for round_ in range(1, args.rounds + 1):
            for label, source in code:
                row = await measure(
                    moto.url,
                    source,
                    Path(tmp),
                    args.subscribers,
                    args.events,
                    args.passes,
                    args.idle,
                )
                row = {"target": label, "round": round_, **row, "loadavg": os.getloadavg()}
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "functions_per_frame"}))
    settings = {"subscribers": args.subscribers, "events": args.events, "passes": args.passes}
    settings |= QUIET
    print(write_result(args.output, {"settings": settings, "rows": rows}))


if __name__ == "__main__":
    asyncio.run(main())
