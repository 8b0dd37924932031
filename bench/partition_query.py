"""Milliseconds per tail poll as the table grows: the embedded DynamoDB of git
revision ``--baseline`` (moto's own Query, which sorts the whole table) beside
this tree's (``infra/queries.py``), each ``python -m infra.local`` in a process
of its own, in one run.

At each size both tables are filled to that many items in other partitions
(``bench.transactions.fill``), then the gateway's own read of a channel of 20
events, ``EventLog.read_after`` after its 10th (one Query), runs ``--polls``
times, alternating between the two servers poll by poll.

    .venv/bin/python -m bench.partition_query --baseline 84e770b
    # writes bench/results/partition-query.json
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, main_beside_baseline
from bench.transactions import TABLE, embedded, fill
from gateway.dynamodb import open_dynamodb
from gateway.items import NewEvent
from gateway.settings import Settings
from gateway.store import EventLog
from infra.local import local_session
from infra.table import ensure_table

SIZES = (0, 2000, 8000, 16000)


async def run(baseline: Path, polls: int) -> dict[str, Any]:
    with embedded(baseline) as before_url, embedded(ROOT) as after_url:
        async with contextlib.AsyncExitStack() as stack:
            logs = {}
            for name, url in (("before", before_url), ("after", after_url)):
                settings = Settings(table_name=TABLE, dynamodb_endpoint_url=url)
                client = await stack.enter_async_context(open_dynamodb(settings, local_session()))
                await ensure_table(client, TABLE)
                log = EventLog.for_settings(client, settings)
                for _ in range(20):
                    await log.append("c", [NewEvent(json.dumps("y" * 100))])
                logs[name] = (client, log)
            rows = []
            have = 20
            for size in SIZES:
                for client, _ in logs.values():
                    await fill(client, have, size)
                have = max(have, size)
                times: dict[str, list[float]] = {name: [] for name in logs}
                for _ in range(polls):
                    for name, (_, log) in logs.items():
                        started = time.perf_counter()
                        page = await log.read_after("c", 10)
                        times[name].append((time.perf_counter() - started) * 1000)
                        assert [event.seq for event in page.events] == list(range(11, 21))
                row: dict[str, Any] = {"items": size}
                for name in logs:
                    row[f"{name}_ms"] = round(statistics.median(times[name]), 2)
                    row[f"{name}_max_ms"] = round(max(times[name]), 2)
                row["ratio"] = round(row["before_ms"] / row["after_ms"], 1)
                print(json.dumps(row), flush=True)
                rows.append(row)
    return {"polls_per_size": polls, "rows": rows}


def main() -> None:
    count = ("--polls", 50, "polls per size and server")
    main_beside_baseline("partition-query", __doc__.splitlines()[0], run, count)


if __name__ == "__main__":
    main()
