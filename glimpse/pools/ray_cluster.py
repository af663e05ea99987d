"""Pools on Ray: ``MakePool`` finds or starts Ray, ``RunMain`` runs ``glimpse-cluster --type ray``.

Where a pool runs, first that applies: an ``address``; ``$RAY_ADDRESS`` (``auto``,
``host:port``, ``ray://host:port``); a Ray already initialized in this process (used as it is);
else an embedded Ray on 127.0.0.1 that the pool starts and shuts down on ``close()``.
The engine lives in ``glimpse/pools/backends/ray/``.
"""

from glimpse.pools.registry import require_extra

require_extra("ray")

from glimpse.pools.backends.ray.pool import ADDRESS_VARIABLE, ENVIRONMENT, MakePool, RayPool  # noqa: E402
from glimpse.pools.backends.ray.verbs import VERBS, RunMain  # noqa: E402

__all__ = ["ADDRESS_VARIABLE", "ENVIRONMENT", "VERBS", "MakePool", "RayPool", "RunMain"]

if __name__ == "__main__":
    import sys

    sys.exit(RunMain())
