"""The store-first floor as a process of its own: each publish appended to the log,
then handed to nchan.

``bench.latency``'s first floor appends from the load generator's own event loop,
which at 100 and 1000 subscribers is also reading the previous event's
deliveries, so its appends could wait behind socket reads the gateway's do not
(BENCHMARKS.md section 12 measured the two floors alike). Here the append runs
where the gateway's does, in a server process that does nothing else, through the same Python API
(the same conditional write on the same store), and the event is then
published to nchan over one kept-alive connection.

    python -m bench.floor --port P --nchan http://127.0.0.1:N --dynamodb URL --table T

``POST /channels/{channel}/events`` with ``{"data": ...}`` answers ``201 {"ids": [id]}``
once nchan has the event.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.dynamodb import open_dynamodb
from gateway.items import NewEvent
from gateway.settings import Settings
from gateway.store import EventLog
from infra.local import local_session
from infra.table import ensure_table


def floor_app(nchan: str, settings: Settings) -> Starlette:
    state: dict[str, object] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with (
            open_dynamodb(settings, local_session()) as dynamo,
            httpx.AsyncClient(base_url=nchan, timeout=30) as hub,
        ):
            await ensure_table(dynamo, settings.table_name)
            state["log"] = EventLog.for_settings(dynamo, settings)
            state["hub"] = hub
            yield

    async def publish(request: Request) -> JSONResponse:
        channel = request.path_params["channel"]
        data = json.dumps((await request.json())["data"])
        log: EventLog = state["log"]  # type: ignore[assignment]
        hub: httpx.AsyncClient = state["hub"]  # type: ignore[assignment]
        appended = await log.append(channel, [NewEvent(data)])
        # As bench.common.nchan publishes: the id as it is (nchan does not decode $arg_id).
        (await hub.post(f"/pub?id={channel}", content=data)).raise_for_status()
        ids = [event.event_id for event in appended.events]
        return JSONResponse({"ids": ids}, status_code=201)

    routes = [Route("/channels/{channel}/events", publish, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--nchan", required=True)
    parser.add_argument("--dynamodb", required=True)
    parser.add_argument("--table", required=True)
    args = parser.parse_args()
    settings = Settings(table_name=args.table, dynamodb_endpoint_url=args.dynamodb)
    app = floor_app(args.nchan, settings)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
