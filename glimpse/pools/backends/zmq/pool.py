"""``ZmqPool`` and ``MakePool``: connect to a glimpse ZeroMQ broker, or start one with workers.

A cluster is one broker listening on one port (127.0.0.1 unless told otherwise); pools and
workers both connect to it, and the messages they send tell them apart (see ``protocol.py``).
Where a pool runs, first that applies: the ``address`` argument; ``$GLIMPSE_ZMQ_ADDRESS``; else
an embedded broker and one worker per core that the pool starts and ends. Every message is
signed with the cluster key (``glimpse.pools.security``); an embedded cluster makes its own.
"""

from __future__ import annotations

import os

from glimpse.pools.backends.zmq.backend import ZmqBackend
from glimpse.pools.backends.zmq.embedded import STARTUP_SECONDS, EmbeddedZmqCluster
from glimpse.pools.backends.zmq.protocol import normalize_address
from glimpse.pools.cluster.pool import ClusterPool, resolve_address
from glimpse.pools.security import ClusterKey, generate_key, insecure_key, resolve_key

ADDRESS_VARIABLE = "GLIMPSE_ZMQ_ADDRESS"
ENVIRONMENT = (ADDRESS_VARIABLE,)

#: The keys of the embedded clusters this process started, by address: a pool unpickled here finds its key.
_EMBEDDED_KEYS: dict[str, ClusterKey] = {}


def MakePool(
    address: str | None = None,
    workers: int | None = None,
    key: str | bytes | None = None,
    key_file: str | None = None,
    insecure: bool = False,
) -> ZmqPool:
    """Return a :class:`ZmqPool`; see it for the arguments."""
    return ZmqPool(address, workers, key, key_file, insecure)


class ZmqPool(ClusterPool):
    """A pool whose chunks run on the workers of a glimpse ZeroMQ broker.

    Args:
        address: The broker's address, ``tcp://HOST:PORT``. Defaults to ``$GLIMPSE_ZMQ_ADDRESS``;
            without either, the pool starts a broker on 127.0.0.1 and ``workers`` worker
            processes, and ends them on :meth:`close`.
        workers: How many workers an embedded cluster has (default: one per core).
        key, key_file: The cluster key (hex or base64), or a file holding it. Default:
            ``$GLIMPSE_CLUSTER_KEY``, ``$GLIMPSE_CLUSTER_KEY_FILE``, then the file the broker
            created, ``~/.config/glimpse/cluster.key``. An embedded cluster makes a random key.
        insecure: Do not sign messages (the broker and workers must run ``--insecure`` too):
            anyone who reaches the broker can run code on its workers. For measurements only.

    A pool pickles to its broker's address and its key file (never the key): a copy unpickled in
    another process or in a task connects to the same broker, with the key file it names or the
    key of that process's environment, and never stops a cluster it did not start.
    """

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        key: str | bytes | None = None,
        key_file: str | None = None,
        insecure: bool = False,
    ):
        address, source = resolve_address(address, ADDRESS_VARIABLE, normalize_address)
        if insecure and (key is not None or key_file is not None):
            raise TypeError("insecure=True means no key; do not give key= or key_file= with it")
        if address is None:
            if key is not None or key_file is not None:
                raise TypeError("an embedded cluster makes its own key; key= and key_file= go with an address")
            backend = _embedded_backend(workers or os.cpu_count() or 1, insecure)
        elif workers is not None:
            raise TypeError(f"workers= sizes an embedded cluster; the pool connects to {address} (from {source})")
        elif insecure:
            backend = ZmqBackend(address, insecure_key("a zmq pool"), source)
        elif key is None and key_file is None and address in _EMBEDDED_KEYS:
            backend = ZmqBackend(address, _EMBEDDED_KEYS[address], source)
        else:
            backend = ZmqBackend(address, resolve_key(key, key_file), source)
        self.cluster: EmbeddedZmqCluster | None = backend.cluster
        self.key: ClusterKey = backend.key
        super().__init__(backend, backend.address)

    def __reduce__(self):
        return (type(self), (self.address, None, None, self.key.file, not self.key.secret))


def _embedded_backend(nworkers: int, insecure: bool) -> ZmqBackend:
    if nworkers < 1:
        raise ValueError(f"workers must be at least 1, not {nworkers}")
    key = insecure_key("an embedded zmq cluster") if insecure else generate_key("the embedded cluster's key")
    cluster = EmbeddedZmqCluster.start(nworkers, key)
    try:
        backend = ZmqBackend(cluster.address, key, "the embedded cluster", cluster=cluster)
        _EMBEDDED_KEYS[backend.address] = key
        connected = backend.wait_for_workers(nworkers, STARTUP_SECONDS)
        if connected < nworkers:
            raise RuntimeError(
                f"only {connected} of {nworkers} embedded zmq workers connected within {STARTUP_SECONDS:g} s"
            )
    except BaseException:
        cluster.kill()
        raise
    return backend
