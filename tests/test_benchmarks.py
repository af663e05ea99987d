"""The benchmarks still run (quick mode) and print a ratio per row; their timings are not judged here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def quick_ratios(script: str, *arguments: str) -> tuple[list[float], str]:
    """The ratios (``1.23x``) ``benchmarks/script --quick`` prints in its rows, and its output."""
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", *arguments],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=BENCHMARKS,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [float(ratio) for ratio in re.findall(r"(\d+\.\d+)x(?=\s|$)", result.stdout)], result.stdout


def test_bench_multicore_quick_prints_a_positive_ratio_for_every_row_and_writes_them_as_json(tmp_path):
    rows = tmp_path / "multicore.json"
    ratios, output = quick_ratios("bench_multicore.py", "--processes", "2", "--json", str(rows))
    # Five rows of tiny tasks (a ratio of the best times and one of the median times), efficiency and two of memory.
    assert len(ratios) == 5 * 2 + 3 and all(ratio > 0 for ratio in ratios), output
    written = json.loads(rows.read_text())  # what benchmarks/charts.py draws (the docs leg draws docs/data/)
    assert written["benchmark"] == "multicore" and len(written["rows"]) == 5 + 1 + 2
    assert all(row["ratio"] > 0 for row in written["rows"])


def test_bench_faces_quick_prints_a_positive_ratio_for_every_row():
    pytest.importorskip("distributed")
    ratios, output = quick_ratios("bench_faces.py", "--no-ray")
    # Four rows of times (a ratio of the best times and one of the median times): three of
    # concurrent.futures, one of Dask; then four asyncio ways, each against aimap.
    assert len(ratios) == 4 * 2 + 4 and all(ratio > 0 for ratio in ratios), output


def test_bench_threads_quick_prints_a_positive_ratio_for_capped_and_uncapped_workers():
    pytest.importorskip("numpy")
    pytest.importorskip("threadpoolctl")
    ratios, output = quick_ratios("bench_threads.py", "--processes", "2")
    # One row: a ratio of the best times and one of the median times.
    assert len(ratios) == 2 and all(ratio > 0 for ratio in ratios), output
    assert "capped [" in output and "uncapped [" in output, output


def test_bench_journal_quick_prints_a_positive_ratio_for_every_row():
    pytest.importorskip("numpy")
    ratios, output = quick_ratios("bench_journal.py", "--processes", "2")
    # Two rows of the journal's cost (of the best times and of the median times), one of resuming.
    assert len(ratios) == 3 * 2 and all(ratio > 0 for ratio in ratios), output
