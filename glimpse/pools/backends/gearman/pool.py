"""``GearmanPool`` and ``MakePool``: run chunks as jobs on gearman servers, or start gearmand and workers.

Where a pool runs, first that applies: the ``address`` argument; ``$GLIMPSE_GEARMAN_ADDRESS``
(``host:port``, several comma-separated servers allowed); else an embedded gearmand on 127.0.0.1
and one worker per core that the pool starts and ends. gearmand authenticates nobody: every job
and result is signed with the cluster key (``glimpse.pools.security``), and workers check jobs
before they unpickle anything.
"""

from __future__ import annotations

from glimpse.pools.backends.gearman import protocol as g
from glimpse.pools.backends.gearman.backend import GearmanBackend
from glimpse.pools.backends.gearman.server import find_gearmand
from glimpse.pools.cluster.embedded import EmbeddedCluster
from glimpse.pools.cluster.signed_pool import SignedClusterPool
from glimpse.pools.security import ClusterKey

ADDRESS_VARIABLE = "GLIMPSE_GEARMAN_ADDRESS"
ENVIRONMENT = (ADDRESS_VARIABLE,)


def _normalize(address: str) -> str:
    return g.format_servers(g.parse_servers(address))


class GearmanPool(SignedClusterPool):
    """A pool whose chunks run as gearman jobs on glimpse workers.

    Args:
        address: The gearman servers, ``HOST:PORT[,HOST:PORT...]``. Defaults to
            ``$GLIMPSE_GEARMAN_ADDRESS``; without either, the pool starts gearmand on 127.0.0.1 and
            ``workers`` worker processes, and ends them on :meth:`close` (needs gearmand:
            ``apt-get install gearman-job-server``).
        workers: How many workers an embedded cluster has (default: one per core).
        key, key_file: The cluster key (hex or base64), or a file holding it. Default:
            ``$GLIMPSE_CLUSTER_KEY``, ``$GLIMPSE_CLUSTER_KEY_FILE``, then ``~/.config/glimpse/cluster.key``.
            An embedded cluster makes a random key.
        insecure: Sign nothing (workers must run ``--insecure`` too). For measurements only.
        initializer, initargs: ``initializer(*initargs)`` runs once in each worker process before its
            first item, as multiprocessing's.
        maxtasksperchild: How many chunks a task process of an embedded cluster runs before a fresh one
            replaces it, as multiprocessing's (default: no limit); for a cluster of your own,
            ``LaunchWorker --maxtasksperchild``.

    A pool pickles to its servers' address and its key file, never to the key.
    """

    ADDRESS_VARIABLE = ADDRESS_VARIABLE
    TYPE = "gearman"
    normalize_address = staticmethod(_normalize)

    def connect(
        self, address: str, key: ClusterKey, source: str, cluster: EmbeddedCluster | None = None
    ) -> GearmanBackend:
        return GearmanBackend(g.parse_servers(address), key, source, cluster=cluster)

    def start_cluster(self, nworkers: int, key: ClusterKey, max_chunks: int | None) -> EmbeddedCluster:
        find_gearmand()
        return EmbeddedCluster.start("gearman", nworkers, key, max_chunks=max_chunks, broker_signs=False)


#: ``MakePool(...)`` is ``GearmanPool(...)``: the same arguments.
MakePool = GearmanPool
