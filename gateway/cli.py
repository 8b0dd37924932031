"""sse-gateway: run the gateway under uvicorn.

``dev`` is the one-command local setup: an embedded DynamoDB (moto's server on
loopback), the table, and the demo page. ``serve`` is the container entry
point: the same app against the DynamoDB the settings name.

Both run on uvloop's event loop with the httptools HTTP parser when they are
installed (the ``serve`` extra, which ``local`` includes), else on asyncio and
h11: C instead of Python in the loop and in request parsing, for every frame
of every stream (see BENCHMARKS.md). The server runs inside our own
``asyncio`` runner (the DynamoDB client must be opened on the loop that serves),
so the loop is chosen here rather than by ``uvicorn.run``. What one connection
may hold (its request head, its time to send one, the number of connections)
is bounded by ``gateway.serving``'s protocols.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import importlib.metadata
import importlib.util
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import FrameType
from typing import Any

import aioboto3
import uvicorn

from gateway.app import create_app
from gateway.dynamodb import open_dynamodb
from gateway.errors import SettingsError
from gateway.metrics import metrics_for
from gateway.readiness import check_table
from gateway.redaction import RedactTokens
from gateway.serving import protocol_for
from gateway.settings import ENV_PREFIX, Settings, load_settings
from gateway.store import EventLog
from infra.table import ensure_table

logger = logging.getLogger("sse_gateway")

# Open sessions are told to end at once on shutdown; a stream still open after
# this grace period (a client that stopped reading) is cut.
SHUTDOWN_GRACE_SECONDS = 2


class _Server(uvicorn.Server):
    """Ends open SSE sessions with ``retry:`` on Ctrl-C or SIGTERM.

    The signals are handled on the loop because uvicorn's own handling re-raises
    a handled Ctrl-C once it has stopped, cutting short the client's clean close.
    """

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


async def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    session: aioboto3.Session | None = None,
    create_table: bool = False,
    http: str = "h11",
    access_log: bool = True,
) -> None:
    async with open_dynamodb(settings, session) as client:
        if create_table and await ensure_table(client, settings.table_name):
            logger.info("created table %s", settings.table_name)
        metrics = metrics_for(settings)
        store = EventLog.for_settings(client, settings, metrics=metrics)
        await check_table(store, settings)
        app = create_app(settings, store, metrics=metrics)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            http=protocol_for(http, settings),
            access_log=access_log,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
            timeout_keep_alive=settings.keep_alive_seconds,
            h11_max_incomplete_event_size=settings.max_header_bytes,
        )
        logging.getLogger("uvicorn.access").addFilter(RedactTokens())
        # What is built by now (modules, botocore's service models, the app) lives as
        # long as the process: frozen out of the collector's sight, a full collection
        # no longer walks it while a thousand sessions wait for a frame (it paused
        # the loop for 40-390 ms; BENCHMARKS.md section 11).
        gc.collect()
        gc.freeze()
        await _Server(config, on_exit=app.state.hub.close).serve()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sse-gateway",
        description="Resumable Server-Sent Events over a DynamoDB event log, under uvicorn.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    dev = commands.add_parser("dev", help="run locally on an embedded DynamoDB, with a demo page")
    dynamodb = dev.add_mutually_exclusive_group()
    dynamodb.add_argument(
        "--dynamodb-endpoint", metavar="URL", help="use this DynamoDB instead of the embedded one"
    )
    dynamodb.add_argument(
        "--dynamodb-port",
        type=int,
        default=0,
        metavar="PORT",
        help="the embedded DynamoDB's port (default: a free one; the start prints it)",
    )
    serve = commands.add_parser(
        "serve", help="serve against the DynamoDB the SSE_GATEWAY_* settings name (a container)"
    )
    for command in (dev, serve):
        command.add_argument(
            "--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)"
        )
        command.add_argument("--port", type=int, default=8000, help="port to listen on")
        command.add_argument(
            "--loop",
            choices=["auto", "uvloop", "asyncio"],
            default="auto",
            help="event loop (auto: uvloop when installed)",
        )
        command.add_argument(
            "--http",
            choices=["auto", "httptools", "h11"],
            default="auto",
            help="HTTP parser (auto: httptools when installed)",
        )
        command.add_argument(
            "--no-access-log",
            dest="access_log",
            action="store_false",
            help="no log line per request (a connect storm then costs less CPU)",
        )
    return parser


def _server_stack(args: argparse.Namespace) -> tuple[str, str]:
    """The event loop and HTTP parser to serve with: ``auto`` takes the fast one
    when it is installed."""
    loop, http = args.loop, args.http
    if loop == "auto":
        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    if http == "auto":
        http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    for chosen in (loop, http):
        if importlib.util.find_spec(chosen) is None:
            raise SettingsError(f"{chosen} is not installed: pip install 'sse-gateway[serve]'")
    return loop, http


def _run(serving: Coroutine[Any, Any, None], loop: str) -> None:
    factory = importlib.import_module("uvloop").new_event_loop if loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serving)


def _version() -> str:
    try:
        return importlib.metadata.version("sse-gateway")
    except importlib.metadata.PackageNotFoundError:  # run from a tree that is not installed
        return "unknown"


def local_exports(endpoint: str, settings: Settings) -> str:
    """What another shell exports to reach ``dev``'s DynamoDB: ``open_publisher``, a
    ``serve``. moto takes any credentials, so these are no secret."""
    variables = {
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        f"{ENV_PREFIX}DYNAMODB_REGION": "us-east-1",
        f"{ENV_PREFIX}DYNAMODB_ENDPOINT_URL": endpoint,
        f"{ENV_PREFIX}TABLE_NAME": settings.table_name,
    }
    return "export " + " ".join(f"{name}={value}" for name, value in variables.items())


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    try:
        settings = load_settings()
        loop, http = _server_stack(args)
        logger.info("serving on the %s event loop with the %s HTTP parser", loop, http)
        if args.command == "serve":
            serving = serve(
                settings, host=args.host, port=args.port, http=http, access_log=args.access_log
            )
            _run(serving, loop)
        else:
            _dev(args, settings, loop, http)
    except SettingsError as exc:  # what to set, without a traceback
        print(f"sse-gateway: {exc.message}", file=sys.stderr)
        return 2
    return 0


def _dev(args: argparse.Namespace, settings: Settings, loop: str, http: str) -> None:
    from infra.local import embedded_dynamodb, local_session

    dynamodb: AbstractContextManager[str] = (
        nullcontext(args.dynamodb_endpoint)
        if args.dynamodb_endpoint
        else embedded_dynamodb(port=args.dynamodb_port)
    )
    with dynamodb as endpoint:
        logger.info(
            "DynamoDB at %s, table %s; to publish from Python or run sse-gateway serve "
            "against it, paste in another shell:\n%s",
            endpoint,
            settings.table_name,
            local_exports(endpoint, settings),
        )
        settings = settings.model_copy(
            update={"dynamodb_endpoint_url": endpoint, "demo_page": True, "metrics": True}
        )
        serving = serve(
            settings,
            host=args.host,
            port=args.port,
            session=local_session(),
            create_table=True,
            http=http,
            access_log=args.access_log,
        )
        _run(serving, loop)


if __name__ == "__main__":
    raise SystemExit(main())
