"""Pools on Dask: ``MakePool`` finds or starts a Dask cluster, ``RunMain`` runs ``glimpse-cluster --type dask``.

Where a pool runs, first that applies: a ``client`` passed in; an ``address``;
``$DASK_SCHEDULER_ADDRESS`` or Dask's ``scheduler-address`` setting; else an embedded
``distributed.LocalCluster`` on 127.0.0.1 that the pool starts and shuts down.
The engine lives in ``glimpse/pools/backends/dask/``.
"""

from glimpse.pools.registry import require_extra

require_extra("dask")

from glimpse.pools.backends.dask.pool import ADDRESS_VARIABLE, ENVIRONMENT, DaskPool, MakePool  # noqa: E402
from glimpse.pools.backends.dask.verbs import VERBS, RunMain  # noqa: E402

__all__ = ["ADDRESS_VARIABLE", "ENVIRONMENT", "VERBS", "DaskPool", "MakePool", "RunMain"]

if __name__ == "__main__":
    import sys

    sys.exit(RunMain())
