"""Real servers on real ports for the tests: the gateway under uvicorn in a thread
of its own (with its own event loop) or as a process of its own, and a TCP proxy
in front of DynamoDB that can drop responses, answer with throttling errors or
refuse connections, to inject faults without mocks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.dynamodb import open_dynamodb
from gateway.metrics import metrics_for
from gateway.serving import protocol_for
from gateway.settings import Settings
from gateway.store import EventLog
from infra.local import local_session
from infra.table import ensure_table


class GatewayServer:
    """``create_app`` served by uvicorn on 127.0.0.1 from a background thread; its
    store reads the time from ``clock``. It serves with ``sse-gateway serve``'s
    httptools protocol, or with ``protocol`` (uvicorn's own ``HttpToolsProtocol``:
    a server without the gateway's extension)."""

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        protocol: type[asyncio.Protocol] | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._protocol = protocol or protocol_for("httptools", settings)
        self.url = ""
        self.store: EventLog | None = None
        self.app: Any = None
        self._server: uvicorn.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GatewayServer:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("gateway server did not start")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._server is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.app.state.hub.close)
            self._server.should_exit = True
        self._thread.join(15)

    def call(self, make: Callable[[], Awaitable[Any]]) -> Any:
        """Run a coroutine on the server's loop (for the Python API in-process)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(make(), self._loop).result(30)

    @property
    def hub(self) -> Any:
        return self.app.state.hub

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        async with open_dynamodb(self.settings, local_session()) as client:
            await ensure_table(client, self.settings.table_name)
            metrics = metrics_for(self.settings)
            self.store = EventLog.for_settings(
                client, self.settings, metrics=metrics, clock=self._clock
            )
            self.app = create_app(self.settings, self.store, metrics=metrics)
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
            config = uvicorn.Config(
                self.app,
                http=self._protocol,
                log_level="warning",
                timeout_graceful_shutdown=1,
                lifespan="on",
            )
            self._server = uvicorn.Server(config)
            serving = asyncio.create_task(self._server.serve(sockets=[sock]))
            while not self._server.started and not serving.done():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            self._ready.set()
            await serving


def dynamodb_error(code: str, message: str, **fields: Any) -> bytes:
    """DynamoDB's answer with error ``code`` (and ``CancellationReasons``, say), as
    the service sends it: status 400, the code in ``__type``."""
    body = json.dumps(
        {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": message, **fields}
    ).encode()
    return (
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.0\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    ) + body


_THROTTLED = dynamodb_error(
    "ProvisionedThroughputExceededException",
    "The level of configured provisioned throughput for the table was exceeded.",
)


@dataclass(frozen=True)
class Hold:
    """One answer held back by the proxy: ``applied`` once the request has reached
    DynamoDB, delivered when the test sets ``released``."""

    applied: threading.Event
    released: threading.Event


@dataclass(frozen=True)
class Traced:
    operation: str  # the X-Amz-Target operation, lower case
    trace_id: str | None
    body: bytes


def _header(head: bytes, name: bytes) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip().decode("latin-1")
    return None


class FaultProxy:
    """A TCP proxy to DynamoDB that carries one request per connection (it asks
    the store to close after answering, and closes too), which makes
    per-request faults simple.

    ``refuse``: connections are closed at once. ``stall``: requests reach the
    proxy and are never answered (a hung DynamoDB). ``split_transactions``: a
    ``TransactWriteItems`` is applied its checks first, then one ``PutItem`` at a
    time, last item first, ``split_pause`` seconds apart, which is what a
    ``Query`` may observe of a transaction in DynamoDB (read-committed
    isolation, not serializable; the gateway's checks only ever test ``wid``).
    """

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self._upstream = (host, int(port))
        self.refuse = False
        self.stall = False
        self.split_transactions = False
        self.split_pause = 0.3
        self._drop_next: list[str] = []  # X-Amz-Target operations whose response to drop
        self._fail_next: list[tuple[str, bytes]] = []  # ... to answer with an error
        self._delays: dict[str, float] = {}  # X-Amz-Target operation: seconds its answers wait
        self._holds: dict[str, Hold] = {}
        self.seen: list[str] = []
        self.traced: list[Traced] = []  # every request, with its X-Amzn-Trace-Id
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._server is not None
        self._loop.call_soon_threadsafe(self._server.close)
        self._thread.join(10)

    def drop_response_once(self, operation: str) -> None:
        """The next ``operation`` reaches DynamoDB, but its answer is lost on the way back."""
        self._drop_next.append(operation)

    @property
    def drops_pending(self) -> int:
        return len(self._drop_next)

    def delay(self, operation: str, seconds: float) -> None:
        """``operation`` is applied at once, but its answers arrive ``seconds`` late."""
        self._delays[operation] = seconds

    def hold(self, operation: str) -> Hold:
        """The next ``operation`` is applied at once, and its answer waits until the
        test releases it: an interleaving scripted exactly, whatever the machine's speed.
        An answer from ``fail`` waits too (``applied`` is then set when it is chosen)."""
        self._holds[operation] = hold = Hold(threading.Event(), threading.Event())
        return hold

    def throttle(self, operation: str, times: int) -> None:
        """The next ``times`` ``operation`` requests get DynamoDB's throttling answer."""
        self.fail(operation, _THROTTLED, times)

    def fail(self, operation: str, answer: bytes, times: int = 1) -> None:
        """The next ``times`` ``operation`` requests get ``answer`` (see
        ``dynamodb_error``) and never reach DynamoDB: errors moto never gives."""
        self._fail_next.extend([(operation, answer)] * times)

    def clear_failures(self) -> None:
        self._fail_next.clear()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        self._ready.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._server.serve_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.refuse:
                return
            head = await reader.readuntil(b"\r\n\r\n")
            headers = head.decode("latin-1").lower()
            length = 0
            target = ""
            for line in headers.split("\r\n"):
                if line.startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
                if line.startswith("x-amz-target:"):
                    target = line.split(".", 1)[-1].strip()
            body = await reader.readexactly(length)
            self.seen.append(target)
            self.traced.append(Traced(target, _header(head, b"x-amzn-trace-id"), body))
            if self.stall:
                await reader.read()  # until the client gives up and closes
                return
            failing = next((f for f in self._fail_next if f[0] == target), None)
            if failing is not None:
                self._fail_next.remove(failing)
                await self._held(target)
                writer.write(failing[1])
                await writer.drain()
                return
            if target == "transactwriteitems" and self.split_transactions:
                response = await self._apply_one_by_one(head, body)
            else:
                response = await self._forward(head + body)
            if target in self._drop_next:
                self._drop_next.remove(target)
                return
            await asyncio.sleep(self._delays.get(target, 0))
            await self._held(target)
            writer.write(response)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _held(self, target: str) -> None:
        if (hold := self._holds.pop(target, None)) is not None:
            hold.applied.set()
            await asyncio.to_thread(hold.released.wait, 30)

    async def _forward(self, request: bytes) -> bytes:
        head, _, body = request.partition(b"\r\n\r\n")
        kept = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
        request = b"\r\n".join([*kept, b"Connection: close"]) + b"\r\n\r\n" + body
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        up_writer.write(request)
        await up_writer.drain()
        response = await up_reader.read()  # the store closes after answering
        up_writer.close()
        return response

    async def _apply_one_by_one(self, head: bytes, body: bytes) -> bytes:
        """Each ``ConditionCheck`` of a transaction first (as an ``UpdateItem`` that
        rewrites the attribute it checks on that condition), then each ``Put`` as
        its own ``PutItem``, last first; answers the transaction's success, or the
        first failure."""
        entries = json.loads(body)["TransactItems"]
        checks = [entry["ConditionCheck"] for entry in entries if "ConditionCheck" in entry]
        puts = [entry["Put"] for entry in entries if "Put" in entry]
        lines = [
            line
            for line in head.decode("latin-1").split("\r\n")
            if line and not line.lower().startswith(("x-amz-target:", "content-length:"))
        ]
        requests = [
            ("UpdateItem", {**check, "UpdateExpression": "SET #w = :w"}) for check in checks
        ] + [("PutItem", put) for put in reversed(puts)]
        for index, (operation, request) in enumerate(requests):
            if index:
                await asyncio.sleep(self.split_pause)
            request.pop("ReturnValuesOnConditionCheckFailure", None)
            payload = json.dumps(request).encode()
            request_head = "\r\n".join(
                [
                    *lines,
                    f"X-Amz-Target: DynamoDB_20120810.{operation}",
                    f"Content-Length: {len(payload)}",
                ]
            )
            response = await self._forward(request_head.encode("latin-1") + b"\r\n\r\n" + payload)
            if not response.startswith(b"HTTP/1.1 200"):
                return response
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\n"
            b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sse_gateway_command(*args: str) -> list[str]:
    """The console script installed next to this interpreter, as a user would run it."""
    return [str(Path(sys.executable).parent / "sse-gateway"), *args]


def bare_environment(**variables: str) -> dict[str, str]:
    """The test's environment without anything AWS or SSE_GATEWAY_, nor a config file
    or instance metadata botocore could find credentials or a region in."""
    kept = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "SSE_GATEWAY_"))
    }
    return {
        **kept,
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_EC2_METADATA_DISABLED": "true",
        **variables,
    }


class RedisServer:
    """Debian's ``redis-server`` on a loopback port of its own, without persistence;
    ``kill`` and ``start`` again keep the port, as a restarted Redis would."""

    def __init__(
        self, port: int | None = None, password: str | None = None, cluster_dir: Path | None = None
    ) -> None:
        self.port = port or (cluster_port() if cluster_dir else free_port())
        self.password = password
        self.cluster_dir = cluster_dir
        credentials = f":{password}@" if password else ""
        self.url = f"redis://{credentials}127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no"]
        if self.password:
            command += ["--requirepass", self.password]
        if self.cluster_dir is not None:  # a node of a cluster (see create_cluster)
            config = self.cluster_dir / f"nodes-{self.port}.conf"
            command += ["--cluster-enabled", "yes", "--cluster-config-file", str(config)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                    return self
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING within 20 s")

    def kill(self) -> None:
        """SIGKILL: every connection cut at once, every subscription gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def cluster_port() -> int:
    """A free port whose cluster bus port (10000 above it) is free and valid too."""
    while True:
        port = free_port()
        if port + 10_000 <= 65_535:
            with contextlib.suppress(OSError), socket.socket() as sock:
                sock.bind(("127.0.0.1", port + 10_000))
                return port


def create_cluster(nodes: list[RedisServer]) -> None:
    """Join cluster-enabled ``nodes`` into one cluster (every slot covered, no replicas)
    with Debian's ``redis-cli``, and wait until every node says it is ok."""
    addresses = [f"127.0.0.1:{node.port}" for node in nodes]
    subprocess.run(
        ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0"],
        input=b"yes\n",
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=60,
    )
    deadline = time.monotonic() + 30
    for node in nodes:
        while (
            b"cluster_state:ok"
            not in subprocess.run(
                ["redis-cli", "-p", str(node.port), "cluster", "info"],
                capture_output=True,
                check=True,
            ).stdout
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not become ok within 30 s")
            time.sleep(0.1)


class GatewayProcess:
    """``sse-gateway dev`` (or ``serve``) as its own process on a fixed port, against a
    shared DynamoDB, so a test can SIGKILL it and start it again where clients expect it."""

    def __init__(self, dynamodb_endpoint: str, env: dict[str, str], command: str = "dev") -> None:
        self._dynamodb_endpoint = dynamodb_endpoint
        self._env = {**os.environ, **env}
        self._command = command
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProcess:
        if self._command == "serve":  # the settings name the DynamoDB
            self._env["SSE_GATEWAY_DYNAMODB_ENDPOINT_URL"] = self._dynamodb_endpoint
            command = sse_gateway_command("serve", "--port", str(self.port))
        else:
            command = sse_gateway_command(
                "dev", "--dynamodb-endpoint", self._dynamodb_endpoint, "--port", str(self.port)
            )
        self.process = subprocess.Popen(
            command, env=self._env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sse-gateway exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("sse-gateway did not answer /healthz within 30 s")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no ``retry:``, connections cut mid-stream."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def rss_bytes(self) -> int:
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        (line,) = [row for row in status.splitlines() if row.startswith("VmRSS:")]
        return int(line.split()[1]) * 1024


async def gauges(http: httpx.AsyncClient, base_url: str) -> dict[str, float]:
    """The unlabelled samples of ``GET /metrics`` (of a server with metrics on), as
    an operator counts feeds and sessions."""
    response = await http.get(f"{base_url}/metrics")
    assert response.status_code == 200, response.text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if not sample.labels
    }


async def publish(
    http: httpx.AsyncClient, base_url: str, channel: str, body: Any, **headers: str
) -> list[str]:
    """Publish through the HTTP API; returns the acknowledged ids (asserts a 201)."""
    response = await http.post(f"{base_url}/channels/{channel}/events", json=body, headers=headers)
    assert response.status_code == 201, response.text
    ids: list[str] = response.json()["ids"]
    return ids


def dynamodb_answer(body: dict[str, Any]) -> bytes:
    """A successful DynamoDB answer with ``body``, as the service sends it."""
    payload = json.dumps(body).encode()
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(payload)
    ) + payload
