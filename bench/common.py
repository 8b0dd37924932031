"""What the benchmarks share: the servers under test as real processes, an SSE
client light enough to hold thousands of connections from one process, RSS.

The servers run as processes of their own (moto's server too, as DynamoDB is
remote in production), so the load generator never shares their GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
# Every subscriber of a benchmark comes from one address with auth off: one subject,
# whose shares (gateway/quota.py) must not be what is measured.
ONE_SUBJECT = {"max_sessions_per_subject": 100_000, "max_feeds_per_subject": 100_000}
ROOT = Path(__file__).resolve().parent.parent
NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"


def raise_fd_limit() -> None:
    """Children inherit it: 10k connections need 10k descriptors on each side."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    memory = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    return {"cpu": cpu, "cores": str(os.cpu_count()), "memory": memory, "python": sys.version}


@contextlib.contextmanager
def running(
    command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        command,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def py_spy(output: Path, rate: int) -> Iterator[None]:
    """Sample this process with py-spy (idle samples too, as collapsed stacks) for
    the duration of the block."""
    command = [str(BIN / "py-spy"), "record", "--pid", str(os.getpid()), "--idle"]
    command += [
        "--nonblocking",
        "--full-filenames",
        "--format",
        "raw",
        "--nolineno",
        "-r",
        str(rate),
        "-o",
        str(output),
    ]
    recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)  # attached and sampling
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its output and exits
        recorder.wait(30)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Moto:
    url: str
    pid: int


@contextlib.contextmanager
def moto_server() -> Iterator[Moto]:
    port = free_port()
    command = [sys.executable, "-m", "infra.local", "--port", str(port)]
    with running(command) as process:
        url = f"http://127.0.0.1:{port}"
        wait_http(url)
        yield Moto(url, process.pid)


@dataclass
class Target:
    """A server under test: where to subscribe and publish, and its processes."""

    name: str
    base: str
    pids: list[int]
    subscribe_path: Callable[[str], str]
    publish: Callable[[httpx.AsyncClient, str, dict[str, object]], object]


def main_beside_baseline(
    name: str,
    description: str,
    run: Callable[[Path, int], Awaitable[dict[str, object]]],
    count: tuple[str, int, str],
) -> None:
    """The command line of a benchmark of this tree beside git revision ``--baseline``:
    ``run(baseline checkout, count)``, its result written as ``name`` with the load
    average before and after. ``count`` is the option's (flag, default, help)."""
    flag, default, count_help = count
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--baseline", required=True, help="git revision before the change")
    parser.add_argument(flag, type=int, default=default, help=count_help)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with checkout(args.baseline) as baseline:
        result = asyncio.run(run(baseline, getattr(args, flag.lstrip("-"))))
    load = {"load_average_before": load_before, "load_average_after": os.getloadavg()}
    print(write_result(name, {"baseline": args.baseline, **load, **result}))


@contextlib.contextmanager
def checkout(ref: str) -> Iterator[Path]:
    """The gateway's code (``gateway/``, ``infra/``) as of git ``ref``, in a temporary
    directory: a before-and-after comparison runs both in one run, on one store."""
    root = Path(tempfile.mkdtemp(prefix="bench-checkout-"))
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", ref, "gateway", "infra"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def python_module(module: str, source: Path | None) -> tuple[list[str], Path, dict[str, str]]:
    """``python -m module`` importing the ``gateway`` package of ``source`` (a
    ``checkout``; this tree when None): the command, its working directory (which
    ``-m`` puts first on ``sys.path``) and the environment it adds (``bench``
    from this tree)."""
    return [sys.executable, "-m", module], source or ROOT, {"PYTHONPATH": str(ROOT)}


Publish = Callable[[httpx.AsyncClient, str, dict[str, object]], Awaitable[object]]


def gateway_publish(base: str) -> Publish:
    """Publishing one event through the gateway's HTTP API at ``base``: its id."""

    async def publish(client: httpx.AsyncClient, channel: str, data: dict[str, object]) -> object:
        response = await client.post(f"{base}/channels/{channel}/events", json={"data": data})
        response.raise_for_status()
        return response.json()["ids"][0]

    return publish


@contextlib.contextmanager
def gateway(
    dynamodb: str,
    *,
    source: Path | None = None,
    args: Sequence[str] = (),
    code: str | None = None,
    wrapper: Sequence[str] = (),
    start_timeout: float = 30,
    **settings: object,
) -> Iterator[Target]:
    """``sse-gateway dev`` on ``dynamodb``; ``source`` runs a ``checkout`` of another
    revision instead, ``args`` are more command-line arguments (``--loop asyncio``),
    ``code`` is Python run instead of ``-m gateway.cli`` (with the same arguments),
    ``wrapper`` what runs the Python (``valgrind --tool=callgrind``)."""
    port = free_port()
    env = {
        "SSE_GATEWAY_TABLE_NAME": f"bench-{uuid.uuid4().hex[:8]}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        **{f"SSE_GATEWAY_{key.upper()}": str(value) for key, value in settings.items()},
    }
    python, cwd, more_env = python_module("gateway.cli", source)
    if code is not None:
        python = [sys.executable, "-c", code]
    command = [*wrapper, *python, "dev", "--dynamodb-endpoint", dynamodb, "--port", str(port)]
    with running([*command, *args], {**env, **more_env}, cwd) as process:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz", start_timeout)
        publish = gateway_publish(base)
        yield Target("sse-gateway", base, [process.pid], lambda c: f"/channels/{c}/events", publish)


NGINX_CONF = """
load_module {module};
worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
master_process on;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 30000; }}
http {{
  access_log off;
  client_body_temp_path {root}/body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location = /pub {{
      nchan_publisher;
      nchan_channel_id $arg_id;
      nchan_message_buffer_length 1000;
      nchan_message_timeout 1h;
    }}
    location ~ ^/sub/(.+)$ {{
      nchan_subscriber eventsource;
      nchan_channel_id $1;
    }}
  }}
}}
"""


@contextlib.contextmanager
def nchan() -> Iterator[Target]:
    """nginx + nchan, in-memory store, one worker (the gateway is one process too)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    root = Path(tempfile.mkdtemp(prefix="bench-nchan-"))
    conf = root / "nginx.conf"
    conf.write_text(NGINX_CONF.format(module=NCHAN_MODULE, root=root, port=port))
    with running([nginx, "-c", str(conf), "-p", str(root)]) as master:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/pub?id=warmup")
        children = subprocess.run(
            ["pgrep", "-P", str(master.pid)], capture_output=True, text=True, check=True
        ).stdout.split()

        async def publish(
            client: httpx.AsyncClient, channel: str, data: dict[str, object]
        ) -> object:
            response = await client.post(f"{base}/pub?id={channel}", content=json.dumps(data))
            response.raise_for_status()
            return None

        yield Target(
            "nchan", base, [master.pid, *map(int, children)], lambda c: f"/sub/{c}", publish
        )
    shutil.rmtree(root, ignore_errors=True)


class Subscriber:
    """One EventSource-like connection on a raw socket: parses HTTP/1.1 (chunked or
    not) and the event stream's ``data:`` lines, and calls ``on_data`` with each.
    httpx would cost more memory and CPU per connection than the servers measured."""

    def __init__(self, base: str, path: str, on_data: Callable[[str, float], None]) -> None:
        host, port = base.removeprefix("http://").split(":")
        self._address = (host, int(port))
        self._path = path
        self._on_data = on_data
        self.connected = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None

    async def run(self) -> None:
        reader, self._writer = await asyncio.open_connection(*self._address, limit=2**20)
        request = f"GET {self._path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
        self._writer.write(request.encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        if not head.startswith("http/1.1 200"):
            raise RuntimeError(f"subscribe failed: {head.splitlines()[0]}")
        chunked = "transfer-encoding: chunked" in head
        pending = b""
        while True:
            if chunked:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    return
                block = await reader.readexactly(size + 2)
                pending += block[:-2]
            else:
                block = await reader.read(65536)
                if not block:
                    return
                pending += block
            # Connected once the first bytes of the stream arrive: the gateway's
            # first frame (the head's id) says where this subscriber starts.
            self.connected.set()
            *lines, pending = pending.split(b"\n")
            now = time.monotonic()
            for line in lines:
                if line.startswith(b"data:"):
                    self._on_data(line[5:].strip().decode(), now)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


async def hang_up(subscribers: Sequence[Subscriber], tasks: Sequence[asyncio.Task[None]]) -> None:
    """Close every subscriber's connection and wait until their tasks have ended."""
    for subscriber in subscribers:
        subscriber.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class Poster:
    """One keep-alive HTTP/1.1 connection that POSTs JSON, on a raw socket: a load
    generator far lighter than httpx, so a publish rate measures the server."""

    def __init__(self, base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self._address = (host, int(port))
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: object) -> bytes:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(*self._address)
        assert self._reader is not None
        payload = json.dumps(body).encode()
        self._writer.write(
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        head = (await self._reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        length = next(
            int(line.split(":", 1)[1])
            for line in head.split("\r\n")
            if line.lower().startswith("content-length:")
        )
        answer = await self._reader.readexactly(length)
        if not head.startswith("HTTP/1.1 2"):
            raise RuntimeError(f"publish failed: {head.splitlines()[0]} {answer!r}")
        return answer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def write_result(name: str, result: object) -> Path:
    path = Path(__file__).parent / "results" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), "result": result}, indent=2))
    return path
