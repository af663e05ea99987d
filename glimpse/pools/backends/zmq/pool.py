"""``ZmqPool`` and ``MakePool``: connect to a glimpse ZeroMQ broker, or start one with workers.

A cluster is one broker listening on one port (127.0.0.1 unless told otherwise); pools and
workers both connect to it, and the messages they send tell them apart (see ``protocol.py``).
Where a pool runs, first that applies: the ``address`` argument; ``$GLIMPSE_ZMQ_ADDRESS``; else
an embedded broker and one worker per core that the pool starts and ends. Every message is
signed with the cluster key (``glimpse.pools.security``); an embedded cluster makes its own.
"""

from __future__ import annotations

from glimpse.pools.backends.zmq.backend import ZmqBackend
from glimpse.pools.backends.zmq.protocol import normalize_address
from glimpse.pools.cluster.embedded import EmbeddedCluster
from glimpse.pools.cluster.signed_pool import SignedClusterPool
from glimpse.pools.security import ClusterKey

ADDRESS_VARIABLE = "GLIMPSE_ZMQ_ADDRESS"
ENVIRONMENT = (ADDRESS_VARIABLE,)


class ZmqPool(SignedClusterPool):
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
        initializer, initargs: ``initializer(*initargs)`` runs once in each worker process before its
            first item, as multiprocessing's.
        maxtasksperchild: How many chunks a task process of an embedded cluster runs before a fresh one
            replaces it, as multiprocessing's (default: no limit); for a cluster of your own,
            ``LaunchWorker --maxtasksperchild``.

    A pool pickles to its broker's address and its key file (never the key): a copy unpickled in
    another process or in a task connects to the same broker, with the key file it names or the
    key of that process's environment, and never stops a cluster it did not start.
    """

    ADDRESS_VARIABLE = ADDRESS_VARIABLE
    TYPE = "zmq"
    normalize_address = staticmethod(normalize_address)

    def connect(self, address: str, key: ClusterKey, source: str, cluster: EmbeddedCluster | None = None) -> ZmqBackend:
        return ZmqBackend(address, key, source, cluster=cluster)

    def start_cluster(self, nworkers: int, key: ClusterKey, max_chunks: int | None) -> EmbeddedCluster:
        return EmbeddedCluster.start("zmq", nworkers, key, in_broker=True, max_chunks=max_chunks)


#: ``MakePool(...)`` is ``ZmqPool(...)``: the same arguments.
MakePool = ZmqPool
