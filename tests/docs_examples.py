"""The ``python`` examples of the README and the docs, and how a test runs one: as a script, in a
fresh interpreter, as a user who copies it would run it."""

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
#: A bound on one example that only catches hangs (most take a second or two).
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


def run_example(example: Example, directory: Path, hang_seconds: float = HANG_SECONDS) -> None:
    """Run ``example`` as a script in ``directory`` on the default ``MakePool()`` (``GLIMPSE_POOL``
    unset); skip when it imports a package not installed, fail with its error output when it fails."""
    missing = sorted(name for name in _top_level_imports(example.code) if importlib.util.find_spec(name) is None)
    if missing:
        pytest.skip(f"the example needs {', '.join(missing)}, which is not installed")
    environment = {name: value for name, value in os.environ.items() if name != "GLIMPSE_POOL"}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environment.get("PYTHONPATH")]))
    script = directory / "example.py"
    script.write_text(example.code)
    returncode, stderr = _run_script(script, environment, hang_seconds)
    where = f"{example.source}:{example.line}"
    assert returncode == 0, f"the example at {where} failed (exit {returncode}):\n{stderr[-3000:]}"


def _run_script(script: Path, environment: dict[str, str], hang_seconds: float) -> tuple[int, str]:
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
        _, stderr = process.communicate(timeout=hang_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"{script.name} did not end within {hang_seconds:.0f} s")
    return process.returncode, stderr


def _top_level_imports(code: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names
