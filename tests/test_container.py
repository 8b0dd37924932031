"""The container image and the compose file, without a Docker engine (there is
none here): the Dockerfile linted by hadolint and held to its invariants, its
build stage's copy of the tree built into the wheel it installs, and the compose
topology run for real as local processes (moto's server, Redis, the two
gateways' commands and environment as written), publishing through one gateway
and receiving through the other."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.cli import _parser
from gateway.settings import Settings, variable_names
from tests.eventstream import EventStreamParser
from tests.servers import RedisServer, bare_environment, free_port, sse_gateway_command

ROOT = Path(__file__).parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    rows = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in rows
        if line and not line.startswith("#")
    ]


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def test_hadolint_finds_nothing_to_report() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    done = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, ""), done.stdout + done.stderr


def test_the_image_is_multi_stage_on_a_pinned_base_and_runs_as_a_user() -> None:
    bases = [argument.split()[0] for op, argument in instructions() if op == "FROM"]
    assert len(bases) == 2 and len(set(bases)) == 1, bases
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", bases[0]), bases[0]
    python = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert bases[0].startswith(f"python:{python}.")  # the version the tests run on
    final = final_stage()
    (user,) = [argument for op, argument in final if op == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    # The final stage copies the environment only: no source tree, no pip run.
    copies = [argument for op, argument in final if op == "COPY"]
    assert copies == ["--from=build /opt/sse-gateway /opt/sse-gateway"]
    assert not [argument for op, argument in final if op == "RUN" and "pip" in argument]


def test_the_image_installs_the_serve_and_notify_extras_and_checks_its_health() -> None:
    (install,) = [a for op, a in instructions() if op == "RUN" and "pip install" in a]
    extras = re.search(r'"\.\[([a-z,]+)\]"', install)
    assert extras is not None
    assert set(extras[1].split(",")) == {"serve", "notify"}
    assert {"serve", "notify"} <= set(PYPROJECT["project"]["optional-dependencies"])
    entrypoint = json.loads(next(a for op, a in final_stage() if op == "ENTRYPOINT"))
    command = json.loads(next(a for op, a in final_stage() if op == "CMD"))
    assert entrypoint == ["sse-gateway"]
    args = _parser().parse_args(command)  # what the CLI accepts
    assert (args.command, args.host) == ("serve", "0.0.0.0")
    (health,) = [a for op, a in final_stage() if op == "HEALTHCHECK"]
    assert f"http://127.0.0.1:{args.port}/healthz" in health
    assert any(op == "EXPOSE" and a == str(args.port) for op, a in final_stage())


def test_the_build_stage_copies_everything_the_wheel_needs_and_nothing_else(
    tmp_path: Path,
) -> None:
    """The build stage's COPY lines, applied to a scratch directory, build the wheel
    the image installs (the README is the package's long description, the static
    files and the bootstrap its package data); .dockerignore lets exactly those in."""
    context = tmp_path / "context"
    context.mkdir()
    copied = []
    for op, argument in instructions():
        if op == "FROM" and copied:
            break
        if op == "COPY":
            *sources, destination = argument.split()
            for source in sources:
                copied.append(source)
                target = context / (source if destination == "./" else destination)
                if (ROOT / source).is_dir():
                    shutil.copytree(
                        ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    shutil.copy(ROOT / source, target)
    allowed = [
        line.removeprefix("!").rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    assert sorted(copied) == sorted(allowed)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), "."],
        cwd=context,
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("sse_gateway-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "gateway/static/sse-gateway.js" in names and "handlers/bootstrap" in names
    metadata = zipfile.ZipFile(wheel).read(
        next(name for name in names if name.endswith("METADATA"))
    )
    assert b"Provides-Extra: serve" in metadata and b"Provides-Extra: notify" in metadata


COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_the_compose_file_pins_its_images_and_names_only_real_settings() -> None:
    services = COMPOSE["services"]
    assert set(services) == {"dynamodb", "redis", "gateway-1", "gateway-2"}
    for name in ("dynamodb", "redis"):
        image = services[name]["image"]
        assert re.fullmatch(r"[\w/.-]+:\d+\.\d+\.\d+[\w.-]*", image), image
    assert services["dynamodb"]["image"].startswith("motoserver/moto:")
    known = set(variable_names(Settings).values())
    for name in ("gateway-1", "gateway-2"):
        assert services[name]["build"] == "."
        settings = {k for k in services[name]["environment"] if k.startswith("SSE_GATEWAY_")}
        assert settings <= known, settings - known
        _parser().parse_args(services[name]["command"])
    assert services["gateway-2"]["depends_on"]["gateway-1"]["condition"] == "service_healthy"


@pytest.fixture
def moto_server() -> Any:
    """moto's own server, as the compose file's image runs it."""
    port = free_port()
    moto = Path(sys.executable).parent / "moto_server"
    process = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield port
    process.kill()
    process.wait()


def test_the_compose_topology_runs_as_written_on_local_processes(
    moto_server: int, redis_server: Any
) -> None:
    """Each service's command and environment as the compose file says, its host
    names pointed at local ports: publish through gateway-1, receive through gateway-2."""
    redis: RedisServer = redis_server()
    hosts = {"dynamodb:5000": f"127.0.0.1:{moto_server}", "redis:6379": f"127.0.0.1:{redis.port}"}

    def localised(value: str) -> str:
        for host, local in hosts.items():
            value = value.replace(host, local)
        return value

    processes: list[subprocess.Popen[bytes]] = []
    urls = {}
    try:
        for name in ("gateway-1", "gateway-2"):  # in depends_on order
            service = COMPOSE["services"][name]
            port = free_port()
            env = bare_environment(
                **{key: localised(str(value)) for key, value in service["environment"].items()}
            )
            command = [localised(word) for word in service["command"]]
            command[command.index("--port") + 1] = str(port)
            command[command.index("--host") + 1] = "127.0.0.1"
            processes.append(
                subprocess.Popen(
                    sse_gateway_command(*command),
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            urls[name] = f"http://127.0.0.1:{port}"
            health = service.get("healthcheck", {}).get("test", ["", "/healthz"])
            path = "/readyz" if "/readyz" in " ".join(health) else "/healthz"
            _wait_until_ok(urls[name] + path, processes[-1])
        subscribe = f"{urls['gateway-2']}/channels/orders:42/events"
        with httpx.stream("GET", subscribe, timeout=30) as response:
            parser = EventStreamParser()
            chunks = response.iter_raw()
            parser.feed(next(chunks))  # the id-only frame: subscribed
            publish = shlex.split(COMPOSE_PUBLISH.replace("localhost:8000", urls["gateway-1"]))
            subprocess.run(publish, check=True, capture_output=True, timeout=30)
            events = []
            for chunk in chunks:
                events += parser.feed(chunk)
                if events:
                    break
        assert [event.data for event in events] == ["1"]
    finally:
        for process in processes:
            process.kill()
            process.wait()


# The publish the compose file's header shows.
COMPOSE_PUBLISH = next(
    line.lstrip("# ").strip()
    for line in (ROOT / "compose.yaml").read_text().splitlines()
    if line.startswith("#   curl -X POST")
)


def _wait_until_ok(url: str, process: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        assert process.poll() is None, f"{url}: the process exited with {process.returncode}"
        try:
            if httpx.get(url).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer 200")
