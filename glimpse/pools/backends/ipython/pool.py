"""``IPythonPool`` and ``MakePool``: which IPython parallel controller a pool uses.

``MakePool()`` runs on the first of: a ``client`` passed in; the connection arguments; the
``GLIMPSE_IPYTHON_PROFILE`` / ``GLIMPSE_IPYTHON_PROFILE_DIR`` / ``GLIMPSE_IPYTHON_CLUSTER_ID``
environment variables; a controller of the default profile that answers; else a cluster of its
own on this machine (one engine per core, loopback only), stopped when the pool closes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from glimpse.pools.backends.ipython.backend import IPythonBackend
from glimpse.pools.backends.ipython.connection import ENVIRONMENT as _VARIABLES
from glimpse.pools.backends.ipython.connection import Connection, connect, connection_of
from glimpse.pools.backends.ipython.embedded import EmbeddedIPythonCluster
from glimpse.pools.cluster.pool import ClusterPool
from glimpse.pools.errors import ClusterConnectionError

log = logging.getLogger(__name__)

ENVIRONMENT = tuple(_VARIABLES.values())
#: How long the default profile's controller may take to answer before a local cluster is started.
PROBE_SECONDS = 3.0


def MakePool(
    profile: str | None = None,
    profile_dir: str | None = None,
    cluster_id: str | None = None,
    url_file: str | None = None,
    client=None,
    *,
    initializer: Callable[..., object] | None = None,
    initargs: Iterable[Any] = (),
    **client_kwargs,
) -> IPythonPool:
    """Return a pool on an IPython parallel cluster, chosen as the module docstring says.

    Keyword arguments other than these go to ``ipyparallel.Client``. A cluster that is named
    but does not answer raises ``ClusterConnectionError`` within 30 seconds.
    ``initializer(*initargs)`` runs once in each worker process before its first item, as multiprocessing's.
    """
    setup = {"initializer": initializer, "initargs": initargs}
    if client is not None:
        return IPythonPool(client=client, **setup)
    named = Connection(profile, profile_dir, cluster_id, url_file)
    if any((profile, profile_dir, cluster_id, url_file, client_kwargs)):
        return IPythonPool(named, **setup, **client_kwargs)
    return IPythonPool(**setup)


class IPythonPool(ClusterPool):
    """A pool whose chunks run as tasks of an ipyparallel load-balanced view, or, on the cluster
    it starts for itself, as tasks it sends straight to the engines it books.

    Args:
        connection: The controller to connect to; without one, chosen as the module docstring says.
        client: An ``ipyparallel.Client`` to use instead; the pool never closes it.
        **client_kwargs: Passed to ``ipyparallel.Client``.
        initializer, initargs: ``initializer(*initargs)`` runs once in each worker process before its
            first item, as multiprocessing's.

    It pickles to its connection: a copy unpickled elsewhere connects to the same controller,
    and closing it closes only its own client, never a cluster it did not start.
    """

    def __init__(
        self,
        connection: Connection | None = None,
        client=None,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        **client_kwargs,
    ):
        cluster = None
        owns_client = client is None
        if client is not None:
            connection = connection_of(client)
        elif connection is not None:
            client = connect(connection, **client_kwargs)
        else:
            connection, client, cluster = _find_or_start()
        self.client = client
        self.cluster: EmbeddedIPythonCluster | None = cluster
        backend = IPythonBackend(client, owns_client, cluster)
        super().__init__(backend, connection, initializer=initializer, initargs=initargs)

    @property
    def connection(self) -> Connection:
        """How to reach the controller (what the pool pickles to)."""
        return self.address


def _find_or_start() -> tuple[Connection, object, EmbeddedIPythonCluster | None]:
    from_environment = Connection.from_environment()
    if from_environment is not None:
        return from_environment, connect(from_environment), None
    default = Connection()
    if os.path.exists(default.client_file()):
        try:
            return default, connect(default, PROBE_SECONDS, PROBE_SECONDS), None
        except ClusterConnectionError as exc:
            log.warning("starting a local IPython cluster instead: %s", exc)
    cluster = EmbeddedIPythonCluster()
    client = cluster.start()
    return Connection(profile_dir=cluster.profile_dir, cluster_id=cluster.cluster_id), client, cluster
