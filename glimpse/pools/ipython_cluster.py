"""IPython parallel (ipyparallel) pools, the default cluster type: ``MakePool`` and ``RunMain``.

``MakePool()`` runs on the first of: a ``client`` passed in; the connection arguments; the
``GLIMPSE_IPYTHON_PROFILE`` / ``GLIMPSE_IPYTHON_PROFILE_DIR`` / ``GLIMPSE_IPYTHON_CLUSTER_ID``
environment variables; a controller of the default profile that answers; else a cluster of its
own on this machine (one engine per core, loopback only), stopped when the pool closes.
The engine lives in ``glimpse/pools/backends/ipython/``.
"""

from glimpse.pools.registry import require_extra

require_extra("ipython")

from glimpse.pools.backends.ipython.pool import ENVIRONMENT, IPythonPool, MakePool  # noqa: E402
from glimpse.pools.backends.ipython.verbs import VERBS, RunMain  # noqa: E402

__all__ = ["ENVIRONMENT", "VERBS", "IPythonPool", "MakePool", "RunMain"]

if __name__ == "__main__":
    import sys

    sys.exit(RunMain())
