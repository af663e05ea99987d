"""Pools on gearman: ``MakePool`` connects to gearman servers or starts gearmand and workers,
``RunMain`` runs ``glimpse-cluster --type gearman``.

Chunks are jobs of one function per cluster key on the gearman job server (gearmand, the Debian
package ``gearman-job-server``); glimpse's own workers run them. Where a pool runs, first that
applies: the ``address`` argument; ``$GLIMPSE_GEARMAN_ADDRESS``; else an embedded gearmand and one
worker per core that the pool starts and ends. The engine lives in ``glimpse/pools/backends/gearman/``.
"""

from glimpse.pools.registry import require_extra

require_extra("gearman")

from glimpse.pools.backends.gearman.pool import ADDRESS_VARIABLE, ENVIRONMENT, GearmanPool, MakePool  # noqa: E402
from glimpse.pools.backends.gearman.verbs import VERBS, RunMain  # noqa: E402

__all__ = ["ADDRESS_VARIABLE", "ENVIRONMENT", "VERBS", "GearmanPool", "MakePool", "RunMain"]

if __name__ == "__main__":
    import sys

    sys.exit(RunMain())
