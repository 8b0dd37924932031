"""An embedded DynamoDB for local runs and tests: moto's server on loopback.

moto is an optional dependency (``sse-gateway[local]``), imported only here,
so the Lambda package never needs it.

moto's WSGI app is served by cheroot, not by the werkzeug development server
that ``moto_server`` uses: werkzeug answers every request with ``Connection:
close``, so each DynamoDB call paid a new TCP connection and a new server
thread, which DynamoDB itself (keep-alive over TLS) does not make a client
pay. With connections kept alive a call costs about a third less
(BENCHMARKS.md §1). In front of moto's app, ``infra.transactions`` serves
TransactWriteItems (moto's own copies every table it touches) and
``infra.queries`` the gateway's Queries (moto's own sorts the whole table).

    python -m infra.local --port 8000   # the embedded DynamoDB on its own
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import aioboto3

from infra.queries import PartitionQueries
from infra.transactions import TransactionLayer

if TYPE_CHECKING:
    from wsgiref.types import WSGIApplication


def local_session() -> aioboto3.Session:
    """moto accepts any credentials; these keep botocore from looking for real ones."""
    return aioboto3.Session(
        aws_access_key_id="local", aws_secret_access_key="local", region_name="us-east-1"
    )


def moto_app(service: str | None = None) -> WSGIApplication:
    """moto's own WSGI app, every service or only ``service``; state in this process."""
    try:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    except ImportError as exc:
        raise RuntimeError(
            "the embedded DynamoDB needs moto: pip install 'sse-gateway[local]'"
        ) from exc
    if service is not None:
        return create_backend_app(service)  # type: ignore[arg-type]
    app: WSGIApplication = DomainDispatcherApplication(create_backend_app)
    return app


@contextmanager
def serve_wsgi(
    app: WSGIApplication, host: str = "127.0.0.1", port: int = 0, threads: int = 8
) -> Iterator[str]:
    """Serve ``app`` with cheroot for the duration of the block; yields its URL."""
    from cheroot.wsgi import Server

    # Idle kept-alive connections wait in cheroot's selector, not in a thread, so
    # one thread serves every connection, one request at a time.
    server = Server((host, port), app, numthreads=threads, max=threads)
    server.prepare()
    thread = threading.Thread(target=server.serve, name="embedded-dynamodb", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.bind_addr[1]}"
    finally:
        server.stop()
        thread.join()


@contextmanager
def embedded_dynamodb(
    host: str = "127.0.0.1", port: int = 0, *, serialized: bool = False
) -> Iterator[str]:
    """Run moto's server for the duration of the block; yields its endpoint URL.

    Transactions go through ``infra.transactions`` (atomic, and as fast on a
    full table as on an empty one), Queries of a partition through
    ``infra.queries`` (as fast beside a full table as alone). Other requests
    are moto's: served on threads with no lock around an operation, so two
    conditional puts racing from different processes can both succeed.
    ``serialized`` serves one request at a time instead, which makes every
    operation atomic, as DynamoDB's are: for tests that race writers across
    processes. (Within one process the gateway serializes a channel's appends
    itself, so ``sse-gateway dev`` does not need it.)
    """
    app = TransactionLayer(PartitionQueries(moto_app()), items=moto_app("dynamodb"))
    with serve_wsgi(app, host, port, threads=1 if serialized else 8) as url:
        yield url


def keep_collections_short(url: str) -> None:
    """Keep this process's full garbage collections as short as its new objects
    allow, for an embedded DynamoDB in a process of its own (not the tests', which
    shares the test process).

    moto keeps every item as Python objects (about fifty per event), so each full
    collection walked moto's modules and backends (about 110k objects) and every
    item stored so far: 60-130 ms into a benchmark, while every request waited,
    stalls of whichever server was being measured then (BENCHMARKS.md section
    16). So moto's DynamoDB backend is loaded (one ListTables) and the heap
    frozen, and after each full collection what survived it is frozen too: the
    next walks only what is newer. The price is that what survived a full
    collection and later becomes cyclic garbage is never freed; moto's items are
    freed by their reference counts when deleted."""
    asyncio.run(_list_tables(url))
    gc.collect()
    gc.freeze()
    gc.callbacks.append(_freeze_survivors)


async def _list_tables(url: str) -> None:
    async with local_session().client("dynamodb", endpoint_url=url) as client:
        await client.list_tables()


def _freeze_survivors(phase: str, info: dict[str, int]) -> None:
    if phase == "stop" and info["generation"] == 2:
        gc.freeze()


def main() -> None:
    parser = argparse.ArgumentParser(description="The embedded DynamoDB, until interrupted.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--serialized", action="store_true", help="one request at a time")
    args = parser.parse_args()
    with embedded_dynamodb(args.host, args.port, serialized=args.serialized) as url:
        keep_collections_short(url)
        print(f"DynamoDB (moto) at {url}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
