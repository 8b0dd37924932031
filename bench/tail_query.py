"""CPU per tail Query: the poll an idle channel's feed makes (``read_after`` its
position, nothing new), before (``--baseline REF ...``) and after, on one moto
server; and the floor: the same POST made with aiohttp alone.

Three measures of the same loop of sequential tail queries, each in a process
of its own (the code under test on ``PYTHONPATH``):
- instructions per query, from valgrind's callgrind: the count of a run of
  ``--small`` queries subtracted from one of ``--large`` (start-up cancels),
  repeatable on a loaded machine, the figure the comparison rests on;
- CPU per query from the kernel's count for the process (user and system),
  which a shared machine inflates: the versions alternate, ``--rounds`` each;
- where the user time goes: cProfile's own time per function, summed by the
  library the function belongs to (sockets and ``epoll`` apart: waiting).

The floor (measured unless ``--no-floor``) is what no client on aiohttp can go
below: one pre-signed Query POSTed again and again on a ``ClientSession`` made
as aiobotocore makes the client's (its timeouts, connector and options), the
body read and parsed as JSON; no signing, no retry policy, no hooks.

    .venv/bin/python -m bench.tail_query --baseline d921a90 main --rounds 5 --output NAME
    # bench/results/NAME.json (BENCHMARKS.md section 14)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import cProfile
import json
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import ROOT, checkout, moto_server, write_result

TABLE = "tail"
FLOOR = "floor: aiohttp alone"
_CONTENT_TYPE = "application/x-amz-json-1.0"
# Path fragments naming where a function's code lives, most specific first.
LIBRARIES = [
    ("gateway", "/gateway/"),
    ("aiobotocore", "/aiobotocore/"),
    ("botocore", "/botocore/"),
    ("aiohttp, yarl, multidict", "/aiohttp/"),
    ("aiohttp, yarl, multidict", "/yarl/"),
    ("aiohttp, yarl, multidict", "/multidict/"),
    ("asyncio", "/asyncio/"),
    ("json", "/json/"),
]
_WAITING = ("<method 'poll' of 'select.epoll' objects>",)


async def _measured(
    poll: Callable[[], Awaitable[None]], count: int, profile: Path | None
) -> dict[str, float]:
    """``count`` polls after a warm-up: the kernel's count per poll (and a profile)."""
    for _ in range(20):
        await poll()
    profiler = cProfile.Profile() if profile else None
    before = resource.getrusage(resource.RUSAGE_SELF)
    if profiler:
        profiler.enable()
    for _ in range(count):
        await poll()
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "user_us": round((after.ru_utime - before.ru_utime) / count * 1e6, 1),
        "system_us": round((after.ru_stime - before.ru_stime) / count * 1e6, 1),
    }


async def _queries(url: str, channel: str, count: int, profile: Path | None) -> dict[str, float]:
    """``count`` tail queries on ``channel`` (whose log ends at seq 1)."""
    from gateway.dynamodb import open_dynamodb
    from gateway.settings import Settings
    from gateway.store import EventLog
    from infra.local import local_session

    settings = Settings(dynamodb_endpoint_url=url, table_name=TABLE)
    async with open_dynamodb(settings, local_session()) as client:
        log = EventLog.for_settings(client, settings)

        async def poll() -> None:
            page = await log.read_after(channel, 1)
            assert not page.events and page.scanned_to == 1, page

        return await _measured(poll, count, profile)


async def _floor(url: str, channel: str, count: int, profile: Path | None) -> dict[str, float]:
    """``count`` POSTs of one tail query signed once, on aiohttp alone."""
    import aiohttp
    from aiobotocore._constants import DEFAULT_KEEPALIVE_TIMEOUT
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from gateway.settings import Settings

    body = json.dumps(
        {
            "TableName": TABLE,
            "KeyConditionExpression": "#c = :c AND #s > :s",
            "ExpressionAttributeNames": {"#c": "channel", "#s": "seq"},
            "ExpressionAttributeValues": {":c": {"S": channel}, ":s": {"N": "1"}},
            "ConsistentRead": True,
            "ScanIndexForward": True,
            "Limit": 100,
        }
    ).encode()
    headers = {"X-Amz-Target": "DynamoDB_20120810.Query", "Content-Type": _CONTENT_TYPE}
    request = AWSRequest(method="POST", url=f"{url}/", headers=headers, data=body)
    SigV4Auth(Credentials("local", "local"), "dynamodb", "us-east-1").add_auth(request)
    signed = {**dict(request.headers.items()), "Accept-Encoding": "identity"}
    seconds = Settings(table_name=TABLE).dynamodb_timeout_seconds  # the client's, as configured
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=10, ssl=False, keepalive_timeout=DEFAULT_KEEPALIVE_TIMEOUT
        ),
        timeout=aiohttp.ClientTimeout(sock_connect=seconds, sock_read=seconds),
        skip_auto_headers={"CONTENT-TYPE"},
        auto_decompress=False,
    ) as session:

        async def poll() -> None:
            async with session.post(f"{url}/", data=body, headers=signed) as response:
                answer = json.loads(await response.read())
            assert response.status == 200 and answer["Items"] == [], answer

        return await _measured(poll, count, profile)


def _child(code: Path | None, *args: str, valgrind: Path | None = None) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.tail_query", *args]
    if valgrind:
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={valgrind}", *command]
    env = {**os.environ, "PYTHONPATH": f"{code}:{ROOT}" if code else str(ROOT)}
    out = subprocess.run(command, env=env, cwd=code or ROOT, capture_output=True, check=True)
    result: dict[str, float] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return result


def _instructions(callgrind_out: Path) -> int:
    for line in callgrind_out.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise ValueError(f"no instruction count in {callgrind_out}")


def by_library(stats_file: Path, queries: int) -> dict[str, float]:
    """Microseconds of own time per query, by library (cProfile's clock, inflated by
    the profiler itself: read the shares)."""
    own: collections.Counter[str] = collections.Counter()
    stats = pstats.Stats(str(stats_file)).stats  # type: ignore[attr-defined]
    for (filename, _, function), (_, _, tottime, _, _) in stats.items():
        if function in _WAITING:
            continue
        where = next((name for name, part in LIBRARIES if part in filename), "other")
        if "socket" in function:
            where = "socket calls (system)"
        elif "hashlib" in function or filename.endswith("/hmac.py"):
            where = "hashlib, hmac"
        own[where] += tottime
    return {name: round(seconds / queries * 1e6, 1) for name, seconds in own.most_common()}


@contextlib.contextmanager
def versions(
    baselines: list[str], floor: bool
) -> Iterator[list[tuple[str, Path | None, list[str]]]]:
    """(label, source, child options) of each measured version: the baselines'
    checkouts, this tree, and the floor."""
    with contextlib.ExitStack() as stack:
        measured = [
            (f"before ({ref})", stack.enter_context(checkout(ref)), []) for ref in baselines
        ]
        measured.append(("after" if baselines else "this tree", None, []))
        if floor:
            measured.append((FLOOR, None, ["--floor"]))
        yield measured


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", metavar="REF", nargs="*", default=[])
    parser.add_argument("--no-floor", dest="with_floor", action="store_false")
    parser.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)  # the child's
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=500)
    parser.add_argument("--timed", type=int, default=3000, help="queries of each rusage run")
    parser.add_argument("--rounds", type=int, default=3, help="rusage runs of each version")
    parser.add_argument("--output", default="tail_query", help="bench/results/OUTPUT.json")
    parser.add_argument("--child", nargs=4, metavar=("URL", "CHANNEL", "COUNT", "PROFILE"))
    args = parser.parse_args()
    if args.child:
        url, channel, count, profile = args.child
        run = _floor if args.floor else _queries
        result = await run(url, channel, int(count), Path(profile) if profile else None)
        print(json.dumps(result))
        return

    from gateway.dynamodb import open_dynamodb
    from gateway.items import NewEvent
    from gateway.settings import Settings
    from gateway.store import EventLog
    from infra.local import local_session
    from infra.table import ensure_table

    results: dict[str, object] = {"load_before": os.getloadavg()}
    with (
        moto_server() as moto,
        versions(args.baseline, args.with_floor) as code,
        tempfile.TemporaryDirectory() as tmp,
    ):
        settings = Settings(dynamodb_endpoint_url=moto.url, table_name=TABLE)
        async with open_dynamodb(settings, local_session()) as client:
            await ensure_table(client, TABLE)
            channel = uuid.uuid4().hex
            await EventLog.for_settings(client, settings).append(channel, [NewEvent("x")])

        def child(
            source: Path | None, options: list[str], count: int, *rest: str, **kw: Any
        ) -> Any:
            return asyncio.to_thread(
                _child, source, *options, "--child", moto.url, channel, str(count), *rest, **kw
            )

        for label, source, options in code:
            counts = []
            for n in (args.small, args.large):
                out = Path(tmp) / f"callgrind.{len(counts)}"
                await child(source, options, n, "", valgrind=out)
                counts.append(_instructions(out))
            stats = Path(tmp) / "profile"
            await child(source, options, args.timed, str(stats))
            per_query = (counts[1] - counts[0]) / (args.large - args.small)
            results[label] = {
                "instructions_per_query": round(per_query),
                "callgrind_totals": counts,
                "profile_us_per_query": by_library(stats, args.timed),
            }
            print(label, json.dumps(results[label]), flush=True)
        # The kernel's count, the versions alternating so that all see the same load.
        rounds: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in code}
        for _ in range(args.rounds):
            for label, source, options in code:
                timed = await child(source, options, args.timed, "")
                rounds[label].append(timed)
                print(label, json.dumps(timed), flush=True)
        results["cpu_per_query_rounds"] = rounds
    results["load_after"] = os.getloadavg()
    print(write_result(args.output, results))


if __name__ == "__main__":
    asyncio.run(main())
