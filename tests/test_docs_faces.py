"""Every ``python`` example of the README and the docs runs as a script (docs/slurm.md's in the slurm
leg, tests/test_slurm_docs.py), on the default ``MakePool()``."""

from __future__ import annotations

import pytest

from tests.docs_examples import ROOT, Example, examples_in, run_example

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
    run_example(example, tmp_path)
