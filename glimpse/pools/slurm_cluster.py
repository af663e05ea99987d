"""Pools on SLURM: ``MakePool`` runs a Dask scheduler here and Dask workers as SLURM jobs
(dask-jobqueue), or inside the allocation this process runs in; ``RunMain`` runs
``glimpse-cluster --type slurm``. The engine lives in ``glimpse/pools/backends/slurm/``.
"""

from glimpse.pools.registry import require_extra

require_extra("slurm")

from glimpse.pools.backends.slurm.pool import ENVIRONMENT, MakePool, SlurmPool  # noqa: E402
from glimpse.pools.backends.slurm.verbs import VERBS, RunMain  # noqa: E402

__all__ = ["ENVIRONMENT", "VERBS", "MakePool", "RunMain", "SlurmPool"]

if __name__ == "__main__":
    import sys

    sys.exit(RunMain())
