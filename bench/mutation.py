"""Mutation testing of the pure core, by hand like the benchmarks: how many small
planted bugs (mutants) each module's own fast tests catch.

    nice -n 19 .venv/bin/python -m bench.mutation            # every module
    nice -n 19 .venv/bin/python -m bench.mutation wire auth  # some of them

Each module runs in a copy of the work tree (uncommitted edits included), so
the tree itself is never mutated, against only its own fast test files, under
a time budget; the score and every surviving mutant's diff go to
bench/results/mutation.json. bench/results/mutation.md keeps the scores and
says, for each survivor, why it is equivalent (or which test now kills it).

mutmut 3 (not cosmic-ray): it forks each mutant from a warm pytest process and
runs only the tests that reach the mutated function, about 30x faster here
than cosmic-ray's fresh test process per mutant.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTMUT = Path(sys.executable).parent / "mutmut"
RESULTS = ROOT / "bench" / "results" / "mutation.json"

# Each module of the pure core, and the fast test files that are its own.
MODULES: dict[str, list[str]] = {
    "cursor": ["tests/test_cursor.py"],
    "composite": ["tests/test_composite.py"],
    "wire": ["tests/test_wire.py"],
    "validation": ["tests/test_validation.py"],
    "auth": ["tests/test_auth.py"],
    "items": ["tests/test_items.py"],
    "writes": ["tests/test_writes.py"],
}
_RESULT = re.compile(r"^\s*(gateway\.\S+): (.+)$")


def _copy_tree(into: Path) -> None:
    """The work tree's tracked and new files as they are now, without the venv."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for name in listed:
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)


def _config(module: str, tests: list[str]) -> str:
    # The whole package is copied (so ``gateway`` imports from the copy), one module
    # of it mutated.
    others = sorted(p.name for p in (ROOT / "gateway").glob("*.py") if p.stem != module)
    lines = [
        "[mutmut]",
        "source_paths=gateway",
        "do_not_mutate=" + "\n    ".join(f"gateway/{name}" for name in others),
        "also_copy=tests\n    infra\n    handlers\n    pyproject.toml",
        "pytest_add_cli_args_test_selection=" + "\n    ".join(tests),
        # One argument a line, as mutmut reads them.
        "pytest_add_cli_args=-p\n    no:cacheprovider\n    --hypothesis-profile=mutation",
    ]
    return "\n".join(lines) + "\n"


def run_module(module: str, budget: float, children: int) -> dict[str, object]:
    tests = MODULES[module]
    with tempfile.TemporaryDirectory(prefix=f"mutation-{module}-") as tmp:
        work = Path(tmp)
        _copy_tree(work)
        (work / "setup.cfg").write_text(_config(module, tests))
        started = time.monotonic()
        log = work / "mutmut.log"
        with log.open("wb") as output:
            try:
                subprocess.run(
                    [str(MUTMUT), "run", "--max-children", str(children)],
                    cwd=work,
                    timeout=budget,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
                finished = True
            except subprocess.TimeoutExpired:
                finished = False
        seconds = round(time.monotonic() - started, 1)
        listing = subprocess.run(
            [str(MUTMUT), "results", "--all", "true"],
            cwd=work,
            capture_output=True,
            text=True,
        ).stdout
        statuses = {
            m.group(1): m.group(2) for line in listing.splitlines() if (m := _RESULT.match(line))
        }
        survivors = {}
        for name, status in statuses.items():
            if status not in {"killed", "timeout"}:
                shown = subprocess.run(
                    [str(MUTMUT), "show", name], cwd=work, capture_output=True, text=True
                ).stdout
                survivors[name] = {"status": status, "diff": shown}
        # mutmut's progress line ends with the reason it stopped (a failing clean run).
        tail = log.read_text(errors="replace")[-1500:]
    killed = sum(status in {"killed", "timeout"} for status in statuses.values())
    return {
        "module": f"gateway/{module}.py",
        "tests": tests,
        "mutants": len(statuses),
        "killed": killed,
        "score": round(killed / len(statuses), 3) if statuses else None,
        "finished": finished,
        "seconds": seconds,
        "survivors": survivors,
        **({} if killed else {"log": tail}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"of {', '.join(MODULES)} (default: all)")
    parser.add_argument("--budget", type=float, default=900, help="seconds per module")
    parser.add_argument("--children", type=int, default=1, help="mutants run at once")
    args = parser.parse_args()
    unknown = set(args.modules) - set(MODULES)
    if unknown:
        parser.error(f"no such module: {', '.join(sorted(unknown))}")
    for module in args.modules or MODULES:
        result = run_module(module, args.budget, args.children)
        # Read again: another run (of other modules) may have written meanwhile.
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        results[module] = result
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(
            f"{result['module']}: {result['killed']}/{result['mutants']} killed "
            f"({result['score']}), {len(result['survivors'])} surviving, "  # type: ignore[arg-type]
            f"{result['seconds']} s{'' if result['finished'] else ' (budget ran out)'}",
            flush=True,
        )


if __name__ == "__main__":
    main()
