"""The documentation a newcomer navigates: every link between the README and
docs/ lands on a file and a heading that exist, the LICENSE is the one
pyproject.toml declares, and the CLI's help is plain text."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.servers import sse_gateway_command

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's heading ids (lower case, punctuation dropped, spaces as hyphens)
    and explicit ``<a id>`` ones."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    headings = re.findall(r"^#{1,6} (.+)$", text, re.M)
    slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
    return slugs | set(re.findall(r'<a id="([^"]+)"', text))


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_link_lands_on_a_file_and_heading_that_exist(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in _LINK.findall(text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{page.name}: {target}"


def test_the_readme_starts_with_the_two_commands_and_stays_short() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
    assert blocks[0].strip().endswith(".venv/bin/sse-gateway dev")
    assert blocks[1].strip().endswith(".venv/bin/pytest")  # the one .ci/run runs
    assert blocks[1].strip() in (ROOT / ".ci" / "run").read_text().replace(
        "pip install -q", "pip install"
    )
    assert readme.index(blocks[1]) < readme.index("## ")  # before any section
    assert len(readme.splitlines()) < 250


def test_the_license_is_the_one_pyproject_declares() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert declared == {"text": "MIT"}
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in license_text


def test_the_cli_says_its_version_and_its_help_is_plain_text() -> None:
    version = subprocess.run(
        sse_gateway_command("--version"), capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"sse-gateway {importlib.metadata.version('sse-gateway')}"
    for command in ([], ["dev"], ["serve"]):
        shown = subprocess.run(
            sse_gateway_command(*command, "--help"), capture_output=True, text=True, check=True
        ).stdout
        assert "usage: sse-gateway" in shown
        assert "`" not in shown, shown
