"""docs/slurm.md's example runs as a script on the lab's SLURM (tests/slurm_lab.py), as a user on a login
node would run it: its jobs start on the lab's nodes, and the pool cancels them when it closes.

The slurm leg runs this file before the contract suite, while the nodes' cores are free for the
example's two-core jobs."""

from __future__ import annotations

import pytest

from tests.docs_examples import ROOT, Example, examples_in, run_example

pytest.importorskip("dask_jobqueue")

EXAMPLES = examples_in(ROOT / "docs" / "slurm.md")
#: A bound that only catches hangs: the jobs go through SLURM's queue first.
HANG_SECONDS = 300.0


def test_the_slurm_page_has_its_example():
    assert EXAMPLES, "docs/slurm.md lost its example"


@pytest.mark.timeout(HANG_SECONDS + 60)
@pytest.mark.parametrize("example", EXAMPLES, ids=[f"{e.source}:{e.line}" for e in EXAMPLES])
def test_the_example_runs_on_slurm(example: Example, slurm_lab, tmp_path):
    run_example(example, tmp_path, HANG_SECONDS)
    slurm_lab.wait_idle()
