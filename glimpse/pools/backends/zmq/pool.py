"""``ZmqPool`` and ``MakePool``: connect to a glimpse ZeroMQ broker, or start one with workers.

A cluster is one broker listening on one port (127.0.0.1 unless told otherwise); pools and
workers both connect to it, and the messages they send tell them apart (see ``protocol.py``).
Where a pool runs, first that applies: the ``address`` argument; ``$GLIMPSE_ZMQ_ADDRESS``; else
an embedded broker and one worker per core that the pool starts and ends.
"""

from __future__ import annotations

import os

from glimpse.pools.backends.zmq.backend import ZmqBackend
from glimpse.pools.backends.zmq.embedded import STARTUP_SECONDS, EmbeddedZmqCluster
from glimpse.pools.backends.zmq.protocol import normalize_address
from glimpse.pools.cluster.pool import ClusterPool, resolve_address

ADDRESS_VARIABLE = "GLIMPSE_ZMQ_ADDRESS"
ENVIRONMENT = (ADDRESS_VARIABLE,)


def MakePool(address: str | None = None, workers: int | None = None) -> ZmqPool:
    """Return a :class:`ZmqPool`; see it for the arguments."""
    return ZmqPool(address, workers)


class ZmqPool(ClusterPool):
    """A pool whose chunks run on the workers of a glimpse ZeroMQ broker.

    Args:
        address: The broker's address, ``tcp://HOST:PORT``. Defaults to ``$GLIMPSE_ZMQ_ADDRESS``;
            without either, the pool starts a broker on 127.0.0.1 and ``workers`` worker
            processes, and ends them on :meth:`close`.
        workers: How many workers an embedded cluster has (default: one per core).

    A pool pickles to its broker's address: a copy unpickled in another process or in a task
    connects to the same broker and never stops a cluster it did not start.
    """

    def __init__(self, address: str | None = None, workers: int | None = None):
        address, source = resolve_address(address, ADDRESS_VARIABLE, normalize_address)
        if address is None:
            backend = _embedded_backend(workers or os.cpu_count() or 1)
        elif workers is not None:
            raise TypeError(f"workers= sizes an embedded cluster; the pool connects to {address} (from {source})")
        else:
            backend = ZmqBackend(address, source)
        self.cluster: EmbeddedZmqCluster | None = backend.cluster
        super().__init__(backend, backend.address)


def _embedded_backend(nworkers: int) -> ZmqBackend:
    if nworkers < 1:
        raise ValueError(f"workers must be at least 1, not {nworkers}")
    cluster = EmbeddedZmqCluster.start(nworkers)
    try:
        backend = ZmqBackend(cluster.address, "the embedded cluster", cluster=cluster)
        connected = backend.wait_for_workers(nworkers, STARTUP_SECONDS)
        if connected < nworkers:
            raise RuntimeError(
                f"only {connected} of {nworkers} embedded zmq workers connected within {STARTUP_SECONDS:g} s"
            )
    except BaseException:
        cluster.kill()
        raise
    return backend
