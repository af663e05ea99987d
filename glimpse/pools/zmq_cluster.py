"""Pools on a glimpse ZeroMQ cluster: ``MakePool`` connects to or starts one, ``RunMain`` runs
``glimpse-cluster --type zmq``.

A cluster is one broker listening on one port (127.0.0.1 unless told otherwise); pools and
workers both connect to it. Where a pool runs, first that applies: the ``address`` argument;
``$GLIMPSE_ZMQ_ADDRESS``; else an embedded broker and one worker per core that the pool starts
and ends. The engine lives in ``glimpse/pools/backends/zmq/``.
"""

from glimpse.pools.registry import require_extra

require_extra("zmq")

from glimpse.pools.backends.zmq.pool import ADDRESS_VARIABLE, ENVIRONMENT, MakePool, ZmqPool  # noqa: E402
from glimpse.pools.backends.zmq.verbs import VERBS, RunMain  # noqa: E402

__all__ = ["ADDRESS_VARIABLE", "ENVIRONMENT", "VERBS", "MakePool", "RunMain", "ZmqPool"]

if __name__ == "__main__":
    import sys

    sys.exit(RunMain())
