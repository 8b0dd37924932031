"""Milliseconds per append as the table grows: the embedded DynamoDB of git
revision ``--baseline`` (moto's own TransactWriteItems, which deep-copies the
table) beside this tree's (``infra/transactions.py``), each ``python -m
infra.local`` in a process of its own, in one run.

At each size both tables are filled to that many items (BatchWriteItem, copies
of a real batch item in a partition of their own), then one channel takes
``--appends`` appends through ``EventLog.append``, each a transaction after the
channel's first, alternating between the two servers append by append.

    .venv/bin/python -m bench.transactions --baseline e098ac9
    # writes bench/results/transactions.json
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import ROOT, free_port, main_beside_baseline, running, wait_http
from gateway.dynamodb import open_dynamodb
from gateway.items import NewEvent
from gateway.settings import Settings
from gateway.store import EventLog
from infra.local import local_session
from infra.table import ensure_table

TABLE = "bench-transactions"
SIZES = (0, 500, 1000, 2000)


@contextlib.contextmanager
def embedded(source: Path) -> Iterator[str]:
    """``python -m infra.local`` with ``source``'s infra/ first on the path."""
    port = free_port()
    command = [sys.executable, "-m", "infra.local", "--port", str(port)]
    with running(command, cwd=source):
        url = f"http://127.0.0.1:{port}"
        wait_http(url)
        yield url


async def fill(client: Any, have: int, size: int) -> None:
    """Items up to ``size`` (the channel's own appends count too), each a copy of
    the channel's first in a partition of its own: moto's copy costs by attribute."""
    key = {"channel": {"S": "c"}, "seq": {"N": "1"}}
    model = (await client.get_item(TableName=TABLE, Key=key, ConsistentRead=True))["Item"]
    for start in range(have, size, 25):
        requests = [
            {"PutRequest": {"Item": {**model, "channel": {"S": "filler"}, "seq": {"N": str(n)}}}}
            for n in range(start, min(start + 25, size))
        ]
        await client.batch_write_item(RequestItems={TABLE: requests})


async def run(baseline: Path, appends: int) -> dict[str, Any]:
    with embedded(baseline) as before_url, embedded(ROOT) as after_url:
        async with contextlib.AsyncExitStack() as stack:
            logs = {}
            for name, url in (("before", before_url), ("after", after_url)):
                settings = Settings(table_name=TABLE, dynamodb_endpoint_url=url)
                client = await stack.enter_async_context(open_dynamodb(settings, local_session()))
                await ensure_table(client, TABLE)
                log = EventLog.for_settings(client, settings)
                await log.append("c", [NewEvent(json.dumps("y" * 100))])  # not a transaction
                logs[name] = (client, log, [1])
            rows = []
            for size in SIZES:
                times: dict[str, list[float]] = {name: [] for name in logs}
                errors = dict.fromkeys(logs, 0)
                for client, _, have in logs.values():
                    await fill(client, have[0], size)
                    have[0] = max(have[0], size)
                for _ in range(appends):
                    for name, (_, log, have) in logs.items():
                        started = time.perf_counter()
                        try:
                            await log.append("c", [NewEvent(json.dumps("y" * 100))])
                        except Exception as exc:  # moto's crash answers 500s: count them
                            errors[name] += 1
                            print(f"{name} at {size}: {exc!r}", file=sys.stderr)
                            continue
                        times[name].append((time.perf_counter() - started) * 1000)
                        have[0] += 1
                row = {"items": size}
                for name in logs:
                    row[f"{name}_ms"] = round(statistics.median(times[name]), 1)
                    row[f"{name}_errors"] = errors[name]
                row["ratio"] = round(row["before_ms"] / row["after_ms"], 1)
                print(json.dumps(row), flush=True)
                rows.append(row)
    return {"appends_per_size": appends, "rows": rows}


def main() -> None:
    count = ("--appends", 20, "appends per size and server")
    main_beside_baseline("transactions", __doc__.splitlines()[0], run, count)


if __name__ == "__main__":
    main()
