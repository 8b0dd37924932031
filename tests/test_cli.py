"""``sse-gateway`` as a user runs it: a real process on a real port."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.dynamodb import open_dynamodb
from gateway.settings import Settings
from infra.local import local_session
from infra.table import ensure_table
from tests.eventstream import EventStreamParser
from tests.servers import bare_environment, free_port, sse_gateway_command

README = Path(__file__).parent.parent / "README.md"


@pytest.fixture
def dev_server() -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    env = {**os.environ, "SSE_GATEWAY_MAX_SESSION_SECONDS": "1", "SSE_GATEWAY_RETRY_MS": "10"}
    process = subprocess.Popen(
        sse_gateway_command("dev", "--port", str(port)),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # uvicorn's access log goes to stdout
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    yield process, url
    if process.poll() is None:
        process.kill()
        process.wait()


def test_dev_serves_demo_page_publish_and_stream_then_stops_on_ctrl_c(
    dev_server: tuple[subprocess.Popen[str], str],
) -> None:
    process, url = dev_server
    page = httpx.get(f"{url}/")
    assert page.status_code == 200
    assert "/sse-gateway.js" in page.text  # the page runs the browser client
    published = httpx.post(
        f"{url}/channels/demo/events?token=s3cret-token", json={"data": {"hello": "world"}}
    )
    assert published.status_code == 201
    (event_id,) = published.json()["ids"]
    parser = EventStreamParser()
    with httpx.stream(
        "GET", f"{url}/channels/demo/events", headers={"Last-Event-ID": "0"}, timeout=10
    ) as response:
        events = [event for chunk in response.iter_raw() for event in parser.feed(chunk)]
    assert [(e.data, e.last_event_id) for e in events] == [('{"hello":"world"}', event_id)]
    assert parser.retry == 10  # the session ended itself after 1 s
    metrics = httpx.get(f"{url}/metrics")  # dev turns metrics on
    assert "sse_gateway_events_published_total 1.0" in metrics.text.splitlines()

    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=15)
    assert process.returncode == 0, output
    assert "Traceback" not in output
    assert "Finished server process" in output
    assert "POST /channels/demo/events?token=[redacted]" in output
    assert "s3cret-token" not in output
    assert "auth is off" in output
    # The dev install holds the `serve` extra: uvicorn's C loop and parser.
    assert "serving on the uvloop event loop with the httptools HTTP parser" in output


async def _create_table(settings: Settings) -> Settings:
    async with open_dynamodb(settings, local_session()) as client:
        await ensure_table(client, settings.table_name)
    return settings


@pytest.mark.parametrize(
    ("flags", "stack", "logged"),
    [
        (["--loop", "asyncio", "--http", "h11"], "the asyncio event loop with the h11", True),
        (["--no-access-log"], "the uvloop event loop with the httptools", False),
    ],
)
def test_serve_runs_on_the_stack_asked_and_logs_requests_unless_told_not_to(
    make_settings: Callable[..., Settings],
    flags: list[str],
    stack: str,
    logged: bool,
) -> None:
    port = free_port()
    table = asyncio.run(_create_table(make_settings()))  # serve starts only on a table it can read
    env = {
        **os.environ,
        "SSE_GATEWAY_DYNAMODB_ENDPOINT_URL": str(table.dynamodb_endpoint_url),
        "SSE_GATEWAY_TABLE_NAME": table.table_name,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    command = ["serve", "--port", str(port), *flags]
    process = subprocess.Popen(
        sse_gateway_command(*command),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for _ in range(200):
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert response.status_code == 200
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert f"serving on {stack} HTTP parser" in output
    assert ('"GET /healthz HTTP/1.1" 200' in output) is logged, output


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SSE_GATEWAY_HEARTBEAT_SECONDS", "-3", "SSE_GATEWAY_HEARTBEAT_SECONDS"),
        (
            "SSE_GATEWAY_HEARTBEAT_SECOND",
            "5",
            "SSE_GATEWAY_HEARTBEAT_SECOND is not a setting; the closest is "
            "SSE_GATEWAY_HEARTBEAT_SECONDS",
        ),
    ],
)
def test_invalid_setting_fails_at_start_naming_the_variable(
    variable: str, value: str, message: str
) -> None:
    env = {**os.environ, variable: value}
    result = subprocess.run(
        sse_gateway_command("dev", "--port", str(free_port())),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr


def readme_block(marker: str) -> str:
    """The code block that follows ``<!-- marker -->`` in the README."""
    found = re.search(rf"<!-- {re.escape(marker)} -->\n```\w+\n(.*?)```", README.read_text(), re.S)
    assert found is not None, marker
    return found[1]


def test_the_readme_tour_and_its_python_snippet_run_as_written_against_dev(
    tmp_path: Path,
) -> None:
    """What a newcomer does: ``dev`` in one shell, the README's commands in another."""
    port = free_port()
    env = bare_environment(SSE_GATEWAY_MAX_SESSION_SECONDS="1")  # no AWS anything
    process = subprocess.Popen(
        sse_gateway_command("dev", "--port", str(port)),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        exports = next(line for line in process.stdout if line.startswith("export "))
        threading.Thread(target=process.stdout.read, daemon=True).start()  # keep it drained
        variables = dict(word.split("=", 1) for word in exports.split()[1:])
        base = f"http://127.0.0.1:{port}"
        while True:
            try:
                httpx.get(f"{base}/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.1)

        def run(script: str) -> str:
            done = subprocess.run(
                ["bash", "-e", "-c", script.replace("localhost:8000", base)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            return done.stdout

        # Publish: the answers hold consecutive ids.
        output = run(readme_block("README tour: publish"))
        one, end = json.JSONDecoder().raw_decode(output)  # curl -s adds no newline
        (first,), second = one["ids"], json.loads(output[end:])["ids"]
        epoch = first.split("-")[0]
        assert [first, *second] == [f"{epoch}-{seq}" for seq in (1, 2, 3)]

        # From Python, as written, with the exports dev printed.
        (tmp_path / "publish.py").write_text(readme_block("README snippet: from Python"))
        python = [sys.executable, "publish.py"]
        done = subprocess.run(
            python, cwd=tmp_path, env={**env, **variables}, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [f"{epoch}-{seq}" for seq in (4, 5, 6, 7)]
        # Without them, it says what to set.
        bare = subprocess.run(python, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert "SettingsError: no AWS region" in bare.stderr
        assert "SSE_GATEWAY_DYNAMODB_REGION" in bare.stderr
        assert "NoRegionError" not in bare.stderr

        # Resume, with the README's command and the first id: every event after it.
        resume = re.search(r"curl -N .*'Last-Event-ID: (\S+)'", README.read_text())
        assert resume is not None
        parser = EventStreamParser()
        events = parser.feed(run(resume[0].replace(resume[1], first)).encode())
        assert [event.last_event_id for event in events] == [
            f"{epoch}-{seq}" for seq in range(2, 8)
        ]
        assert parser.retry is not None  # the session ended itself
    finally:
        process.kill()
        process.wait()
