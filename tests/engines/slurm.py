"""SLURM pools: Dask workers as SLURM jobs on a real SLURM (slurmctld, slurmd, munged) across two
simulated hosts (tests/slurm_lab.py); needs root and Debian's SLURM packages, and skips saying so."""

from __future__ import annotations

import pytest

POOLS = {"slurm": "slurm_pool"}
# Its workers run on the lab's node hosts, each with processes of its own (PID namespaces).
LIMITS: dict[str, set[str]] = {"slurm": {"workers_on_other_hosts"}}

#: Longer than the contract suite, so no worker retires for its job's time limit in the middle of it.
SUITE_WALLTIME = "00:30:00"
STARTUP_SECONDS = 120.0


@pytest.fixture(scope="session")
def slurm_lab(tmp_path_factory):
    """A SLURM of two nodes, and this process set up as a client of it (``$SLURM_CONF``), with pools'
    job logs and TLS files on a directory every host sees."""
    pytest.importorskip("dask_jobqueue")
    from tests import slurm_lab as lab_module

    reason = lab_module.missing_requirement()
    if reason:
        pytest.skip(f"SLURM tests {reason}")
    lab = lab_module.start_slurm_lab(tmp_path_factory.mktemp("slurm"), nodes=2)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SLURM_CONF", str(lab.conf))
            patch.setenv("GLIMPSE_SLURM_DIRECTORY", str(lab.shared / "pools"))
            patch.delenv("SLURM_JOB_ID", raising=False)
            yield lab
    finally:
        lab.close()


@pytest.fixture(scope="session")
def slurm_pool(slurm_lab):
    from glimpse.pools.slurm_cluster import MakePool

    pool = MakePool(jobs=2, cores=1, memory="1GB", walltime=SUITE_WALLTIME)
    # Ready before the suite starts, as the other engines' fixtures are: both worker jobs running.
    pool.cluster.wait_for_workers(2, timeout=STARTUP_SECONDS)
    yield pool
    pool.terminate()
    pool.join()
