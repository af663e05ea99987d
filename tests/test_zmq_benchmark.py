"""``benchmarks/bench_zmq.py`` still runs (quick mode) on both zmq layouts; its timings are not judged here."""

from __future__ import annotations

import pytest

from tests.test_benchmarks import quick_ratios

pytest.importorskip("zmq")


@pytest.mark.timeout(600)
def test_bench_zmq_quick_prints_a_positive_ratio_for_every_row():
    ratios, output = quick_ratios("bench_zmq.py", "--workers", "2")
    # one-item call, three tiny-item calls (the embedded layout's with a median ratio too) and efficiency,
    # each for two layouts; then four signing rows
    assert len(ratios) == 2 * 5 + 3 + 4 and all(ratio > 0 for ratio in ratios), output
