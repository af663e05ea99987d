"""Every ``python`` example of the README and the docs runs as a script (docs/slurm.md's in the slurm leg).

Each example runs in a fresh interpreter, as a user who copies it would run it, on the default
``MakePool()`` (``GLIMPSE_POOL`` unset); an example that imports a package not installed is skipped.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: A bound on one example that only catches hangs (each takes a second or two).
HANG_SECONDS = 120.0
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


@dataclass
class Example:
    """One ``python`` block: where it is, and its code."""

    source: str
    line: int
    code: str


def examples_in(path: Path, section: str | None = None) -> list[Example]:
    """The ``python`` blocks of ``path``, or of its ``## section`` only."""
    text = path.read_text()
    start, end = 0, len(text)
    if section is not None:
        heading = re.search(rf"^## {re.escape(section)}\n", text, re.MULTILINE)
        assert heading, f"{path.name} has no section '## {section}'"
        start = heading.start()
        following = re.search(r"^## ", text[heading.end() :], re.MULTILINE)
        end = heading.end() + following.start() if following else len(text)
    return [
        Example(path.name, text.count("\n", 0, match.start(1)) + 1, match.group(1))
        for match in _BLOCK.finditer(text, start, end)
    ]


EXAMPLES = (
    examples_in(ROOT / "docs" / "getting-started.md")
    + examples_in(ROOT / "docs" / "faces.md")
    + examples_in(ROOT / "docs" / "long-runs.md")
    + examples_in(ROOT / "README.md")
)


def test_the_docs_have_examples():
    assert len([e for e in EXAMPLES if e.source == "faces.md"]) >= 8, "docs/faces.md lost its examples"
    assert len([e for e in EXAMPLES if e.source == "README.md"]) >= 2, "the README lost its examples"


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"{e.source}:{e.line}" for e in EXAMPLES])
def test_the_example_runs(example: Example, tmp_path):
    missing = sorted(name for name in _top_level_imports(example.code) if importlib.util.find_spec(name) is None)
    if missing:
        pytest.skip(f"the example needs {', '.join(missing)}, which is not installed")
    environment = {name: value for name, value in os.environ.items() if name != "GLIMPSE_POOL"}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environment.get("PYTHONPATH")]))
    script = tmp_path / "example.py"
    script.write_text(example.code)
    returncode, stderr = _run_script(script, environment)
    where = f"{example.source}:{example.line}"
    assert returncode == 0, f"the example at {where} failed (exit {returncode}):\n{stderr[-3000:]}"


def _run_script(script: Path, environment: dict[str, str]) -> tuple[int, str]:
    """Run ``script`` in its own process group, ended by that group's id if it hangs."""
    process = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=script.parent,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=HANG_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"{script.name} did not end within {HANG_SECONDS:.0f} s")
    return process.returncode, stderr


def _top_level_imports(code: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names
