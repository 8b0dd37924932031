"""An embedded DynamoDB for local runs and tests: moto's server on loopback.

moto is an optional dependency (``sse-gateway[local]``), imported only here,
so the Lambda package never needs it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import aioboto3


def local_session() -> aioboto3.Session:
    """moto accepts any credentials; these keep botocore from looking for real ones."""
    return aioboto3.Session(
        aws_access_key_id="local", aws_secret_access_key="local", region_name="us-east-1"
    )


@contextmanager
def embedded_dynamodb(
    host: str = "127.0.0.1", port: int = 0, *, serialized: bool = False
) -> Iterator[str]:
    """Run moto's server for the duration of the block; yields its endpoint URL.

    moto serves requests on threads with no lock around an operation, so two
    conditional puts racing from different processes can both succeed.
    ``serialized`` serves one request at a time instead, which makes every
    operation atomic, as DynamoDB's are: for tests that race writers across
    processes. (Within one process the gateway serializes a channel's appends
    itself, so ``sse-gateway dev`` does not need it.)
    """
    try:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server
    except ImportError as exc:
        raise RuntimeError(
            "the embedded DynamoDB needs moto: pip install 'sse-gateway[local]'"
        ) from exc
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(
        host, port, app, threaded=not serialized, request_handler=MotoRequestHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="embedded-dynamodb", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
