"""Write units per append: what DynamoDB would bill for the gateway's writes.

Every request the Python API (``EventLog.append``) sends is recorded at the
client (a botocore ``before-parameter-build`` hook) and priced by DynamoDB's documented
rules: a standard write costs 1 unit per KB (rounded up) of the item; a
transactional one 2 per KB for each item it holds, a ``ConditionCheck``
included (billed as a write of the item it checks). Counting, not timing: the
numbers do not depend on the machine.

With ``--baseline REF`` the code of git revision ``REF`` is measured beside this
tree's, each in a process of its own on one moto server.

    .venv/bin/python -m bench.write_units --baseline 31ed7bb
    # writes bench/results/write-units.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
from typing import Any

from bench.common import checkout, moto_server, python_module, write_result

SCENARIOS = {
    # name: (publishers, publishes each, events per publish, idempotency keys)
    "1 publisher, 1 event a publish": (1, 200, 1, False),
    "1 publisher, batches of 10": (1, 50, 10, False),
    "8 concurrent publishers, 1 event a publish": (8, 50, 1, False),
    "1 publisher, Idempotency-Key": (1, 100, 1, True),
}
EVENT = json.dumps({"order": 42, "status": "paid", "note": "x" * 60})  # ~100 bytes


def _size(value: dict[str, Any]) -> int:
    """An attribute value's size in bytes, as DynamoDB counts it (near enough)."""
    kind, inner = next(iter(value.items()))
    if kind == "S":
        return len(inner.encode())
    if kind == "N":
        return len(inner.lstrip("-").replace(".", "")) // 2 + 1
    if kind == "L":
        return 3 + sum(1 + _size(v) for v in inner)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + _size(v) for k, v in inner.items())
    return 1


def item_kb(item: dict[str, Any]) -> int:
    return max(1, math.ceil(sum(len(k.encode()) + _size(v) for k, v in item.items()) / 1024))


def units(operation: str, params: dict[str, Any], items: dict[tuple[str, str], int]) -> int:
    """Write units of one request; ``items`` remembers each written item's size in KB,
    for the checks that name it later."""

    def key(table: str, item_key: dict[str, Any]) -> tuple[str, str]:
        return table, json.dumps(item_key, sort_keys=True)

    def put(table: str, item: dict[str, Any]) -> int:
        kb = item_kb(item)
        items[key(table, {k: item[k] for k in ("channel", "seq")})] = kb
        return kb

    if operation == "PutItem":
        return put(params["TableName"], params["Item"])
    if operation == "TransactWriteItems":
        total = 0
        for entry in params["TransactItems"]:
            if "Put" in entry:
                total += 2 * put(entry["Put"]["TableName"], entry["Put"]["Item"])
            elif "ConditionCheck" in entry:
                check = entry["ConditionCheck"]
                total += 2 * items.get(key(check["TableName"], check["Key"]), 1)
        return total
    return 0


async def scenario(
    endpoint: str, table: str, publishers: int, each: int, size: int, keyed: bool
) -> dict[str, Any]:
    """One scenario on a table of its own: appends, requests by kind, write units."""
    from gateway.dynamodb import open_dynamodb
    from gateway.items import NewEvent
    from gateway.settings import Settings
    from gateway.store import EventLog
    from infra.local import local_session
    from infra.table import ensure_table

    settings = Settings(table_name=table, dynamodb_endpoint_url=endpoint)
    requests: dict[str, int] = {}
    billed = 0
    sizes: dict[tuple[str, str], int] = {}

    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        nonlocal billed
        requests[model.name] = requests.get(model.name, 0) + 1
        billed += units(model.name, params, sizes)

    async with open_dynamodb(settings, local_session()) as client:
        await ensure_table(client, table)
        client.meta.events.register("before-parameter-build.dynamodb", record)
        log = EventLog.for_settings(client, settings)

        async def publisher(n: int) -> None:
            for i in range(each):
                events = [NewEvent(EVENT) for _ in range(size)]
                await log.append("c", events, idempotency_key=f"{n}-{i}" if keyed else None)

        await asyncio.gather(*map(publisher, range(publishers)))
    appends = publishers * each
    return {
        "appends": appends,
        "events": appends * size,
        "requests": requests,
        "write_units": billed,
        "write_units_per_append": round(billed / appends, 2),
    }


async def measure(endpoint: str) -> dict[str, Any]:
    stamp = f"{asyncio.get_running_loop().time():.0f}"
    return {
        name: await scenario(endpoint, f"bench-units-{index}-{stamp}", *shape)
        for index, (name, shape) in enumerate(SCENARIOS.items())
    }


def run(endpoint: str, source: Any) -> dict[str, Any]:
    command, cwd, env = python_module("bench.write_units", source)
    done = subprocess.run(
        [*command, "--measure", endpoint],
        cwd=cwd,
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="a git revision to measure beside this tree")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # one revision, in its process
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(asyncio.run(measure(args.measure))))
        return
    result: dict[str, Any] = {}
    with moto_server() as moto:
        if args.baseline:
            with checkout(args.baseline) as source:
                result[args.baseline] = run(moto.url, source)
        result["this tree"] = run(moto.url, None)
    print(json.dumps(result, indent=2))
    print(write_result("write-units", result), file=sys.stderr)


if __name__ == "__main__":
    main()
