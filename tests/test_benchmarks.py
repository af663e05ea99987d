"""The benchmarks still run (quick mode) and print a ratio per row; their timings are not judged here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_bench_multicore_quick_prints_a_positive_ratio_for_every_row():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_multicore.py"), "--quick", "--processes", "2"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=BENCHMARKS,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ratios = re.findall(r"(\d+\.\d+)x$", result.stdout, flags=re.MULTILINE)
    assert len(ratios) == 8 and all(float(ratio) > 0 for ratio in ratios), result.stdout
