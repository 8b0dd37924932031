"""An embedded DynamoDB for local runs and tests: moto's server on loopback.

moto is an optional dependency (``sse-gateway[local]``), imported only here,
so the Lambda package never needs it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import aioboto3


def local_session() -> aioboto3.Session:
    """moto accepts any credentials; these keep botocore from looking for real ones."""
    return aioboto3.Session(
        aws_access_key_id="local", aws_secret_access_key="local", region_name="us-east-1"
    )


@contextmanager
def embedded_dynamodb(host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run moto's server for the duration of the block; yields its endpoint URL."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        raise RuntimeError(
            "the embedded DynamoDB needs moto: pip install 'sse-gateway[local]'"
        ) from exc
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    try:
        bound_host, bound_port = server.get_host_and_port()
        yield f"http://{bound_host}:{bound_port}"
    finally:
        server.stop()
