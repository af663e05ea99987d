"""The ``glimpse-cluster`` command and ``python -m glimpse.pools``: help, errors and exit codes."""

from __future__ import annotations

import subprocess
import sys

from glimpse.pools import cli
from glimpse.pools.registry import CLUSTER_TYPES


def test_help_lists_every_cluster_type(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in CLUSTER_TYPES:
        assert f"  {name} " in out, f"--help does not list {name}:\n{out}"


def test_missing_verb_prints_usage_and_fails(capsys):
    assert cli.main([]) == 2
    assert "usage: glimpse-cluster" in capsys.readouterr().out


def test_unknown_type_is_a_clear_error(capsys):
    assert cli.main(["--type", "nope", "PingWorkers"]) == 2
    assert "unknown cluster type 'nope'" in capsys.readouterr().err


def test_console_script_runs_as_a_module():
    done = subprocess.run(
        [sys.executable, "-m", "glimpse.pools", "cluster", "--type=nope", "PingWorkers"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "known types" in done.stderr


def test_demo_prints_a_table_for_local_pools():
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "glimpse.pools",
            "demo",
            "--pools",
            "singlecore,multicore",
            "--items",
            "8",
            "--work",
            "500",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["pool", "items", "startup", "s", "seconds", "items/s", "speedup"]
    assert [line.split()[0] for line in lines[1:]] == ["singlecore", "multicore"]
