"""Where publish time goes: the Python API's appends on one channel sampled by
py-spy, before (``--baseline REF``) and after, on one moto server in one run.

Each sample of the publishing process counts for the library of its innermost
frame that belongs to one (a ``json`` call from botocore counts as botocore);
a sample in ``select`` is waiting (for moto's answer). Needs py-spy and the
right to trace (root, or ``kernel.yama.ptrace_scope=0``).

    .venv/bin/python -m bench.profile --baseline main   # bench/results/profile.json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import tempfile
import time
from pathlib import Path

from bench.appends import TABLE, python_api_in, revisions
from bench.common import moto_server, write_result
from gateway.dynamodb import open_dynamodb
from gateway.settings import Settings
from infra.local import local_session
from infra.table import ensure_table

# Path fragments naming where a frame's code lives, most specific first.
LIBRARIES = [
    ("gateway", "/gateway/"),
    ("aiobotocore", "/aiobotocore/"),
    ("botocore: build and sign the request", "/botocore/serialize"),
    ("botocore: build and sign the request", "/botocore/auth"),
    ("botocore: build and sign the request", "/botocore/signers"),
    ("botocore: parse the response", "/botocore/parsers"),
    ("botocore: other (hooks, endpoint rules, retries)", "/botocore/"),
    ("aiohttp", "/aiohttp/"),
    ("asyncio event loop and sockets", "/asyncio/"),
]


def library(stack: list[str]) -> str | None:
    """Where a sample was; None for py-spy's own start and stop (``bench.common.py_spy``)."""
    if any(frame.startswith("py_spy (") for frame in stack):
        return None
    if ".select (" in stack[-1] and "selectors.py" in stack[-1]:
        return "waiting (select)"
    for frame in reversed(stack):
        for name, fragment in LIBRARIES:
            if fragment in frame:
                return name
    return "other"


def summarize(raw: Path) -> dict[str, object]:
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        where = library(stack.split(";"))
        if where is not None:
            counts[where] += int(count)
    total = sum(counts.values())
    busy = total - counts["waiting (select)"]
    return {
        "busy_share": round(busy / total, 3),
        "share_of_busy": {
            name: round(n / busy, 3)
            for name, n in counts.most_common()
            if name != "waiting (select)"
        },
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--publishers", type=int, default=8)
    parser.add_argument("--baseline", metavar="REF")
    args = parser.parse_args()
    rows = []
    with (
        moto_server() as moto,
        revisions(args.baseline) as code,
        tempfile.TemporaryDirectory() as tmp,
    ):
        settings = Settings(table_name=TABLE, dynamodb_endpoint_url=moto.url)
        async with open_dynamodb(settings, local_session()) as client:
            await ensure_table(client, TABLE)
        for label, source in code:
            stacks = Path(tmp) / f"{len(rows)}.txt"
            channel = f"profile-{time.monotonic_ns()}"
            job = (moto.url, channel, args.publishers, args.seconds, moto.pid, str(stacks))
            row = python_api_in(source, *job)
            # CPU from the kernel's count: a sample of a process the machine's other
            # load keeps waiting for a core looks busy to py-spy.
            cpu_ms = 10 * float(str(row["publisher_cpu_percent"]))
            per_append = round(cpu_ms / float(str(row["appends_per_second"])), 3)
            rows.append({"code": label, **row, "cpu_ms_per_append": per_append})
            rows[-1].update(summarize(stacks))
            print(json.dumps(rows[-1]), flush=True)
    write_result("profile", {"publishers": args.publishers, "rows": rows})


if __name__ == "__main__":
    asyncio.run(main())
