"""The pool base of the transports glimpse signs itself (zmq, gearman): where its key comes from,
and how it pickles without it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from glimpse.pools.cluster.embedded import STARTUP_SECONDS, EmbeddedCluster
from glimpse.pools.cluster.pool import ClusterPool, remade, resolve_address
from glimpse.pools.contract import Backend
from glimpse.pools.security import ClusterKey, generate_key, insecure_key, resolve_key
from glimpse.pools.security.keys import KEY_FILE_ARGUMENT

#: The keys of the embedded clusters this process started, by address: a pool unpickled here finds its key.
_EMBEDDED_KEYS: dict[str, ClusterKey] = {}


class SignedClusterPool(ClusterPool):
    """A pool on a cluster whose messages are signed with a cluster key (``pool.key``).

    Where it runs, first that applies: the ``address`` argument, ``$ADDRESS_VARIABLE``, else an
    embedded cluster of ``workers`` workers with a random key of its own. The key, for an address:
    ``key`` (hex or base64) or ``key_file``, else the usual sources (``glimpse.pools.security``);
    ``insecure`` signs nothing (every peer must be started with ``--insecure``).

    It pickles to its address and the ``key_file`` it was given (else it finds its key by the usual
    sources where it is unpickled), never to the key. ``initializer(*initargs)`` runs once in each
    worker process before its first item, as multiprocessing's; after ``maxtasksperchild`` chunks
    a task process of an embedded cluster is replaced by a fresh one (``LaunchWorker
    --maxtasksperchild`` for a cluster of your own).
    """

    ADDRESS_VARIABLE: str
    TYPE: str

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        key: str | bytes | None = None,
        key_file: str | None = None,
        insecure: bool = False,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
    ):
        address, source = resolve_address(address, self.ADDRESS_VARIABLE, self.normalize_address)
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int) or isinstance(maxtasksperchild, bool) or maxtasksperchild < 1
        ):
            raise ValueError(f"maxtasksperchild must be a positive int or None, not {maxtasksperchild!r}")
        if insecure and (key is not None or key_file is not None):
            raise TypeError("insecure=True means no key; do not give key= or key_file= with it")
        if address is None:
            if key is not None or key_file is not None:
                raise TypeError("an embedded cluster makes its own key; key= and key_file= go with an address")
            nworkers = (os.cpu_count() or 1) if workers is None else workers
            if nworkers < 1:
                raise ValueError(f"workers must be at least 1, not {nworkers}")
            what = f"an embedded {self.TYPE} cluster"
            chosen = insecure_key(what) if insecure else generate_key(f"the key of {what}")
            backend = self.embedded_backend(nworkers, chosen, maxtasksperchild)
            _EMBEDDED_KEYS[backend.address] = chosen
        elif workers is not None or maxtasksperchild is not None:
            raise TypeError(
                "workers= and maxtasksperchild= set up an embedded cluster (a cluster of your own takes LaunchWorker "
                f"--nworkers and --maxtasksperchild); the pool connects to {address} (from {source})"
            )
        else:
            if insecure:
                chosen = insecure_key(f"a {self.TYPE} pool")
            elif key is None and key_file is None and address in _EMBEDDED_KEYS:
                chosen = _EMBEDDED_KEYS[address]
            else:
                chosen = resolve_key(key, key_file)
            backend = self.connect(address, chosen, source)
        self.cluster = backend.cluster
        self.key: ClusterKey = backend.key
        super().__init__(backend, backend.address, initializer=initializer, initargs=initargs)

    def __reduce__(self):
        # A key file given as an argument is named; a key found by the usual sources (environment,
        # default key file) is found again by them where the pool is unpickled, on any machine.
        key_file = self.key.file if self.key.source.startswith(KEY_FILE_ARGUMENT) else None
        return remade, (type(self), (self.address, None, None, key_file, not self.key.secret), self._setup_arguments())

    normalize_address: Callable[[str], str] = staticmethod(str.strip)

    def connect(self, address: str, key: ClusterKey, source: str, cluster: EmbeddedCluster | None = None) -> Backend:
        """The backend of a pool on the cluster at ``address`` (an embedded ``cluster`` it ends on close)."""
        raise NotImplementedError

    def start_cluster(self, nworkers: int, key: ClusterKey, max_chunks: int | None) -> EmbeddedCluster:
        """Start an embedded cluster of ``nworkers`` workers sharing ``key``, whose task processes run
        at most ``max_chunks`` chunks each."""
        raise NotImplementedError

    def embedded_backend(self, nworkers: int, key: ClusterKey, max_chunks: int | None = None) -> Backend:
        """The backend of a pool on a cluster of its own (:meth:`start_cluster`), once every worker
        has connected; the cluster is killed if they do not."""
        cluster = self.start_cluster(nworkers, key, max_chunks)
        try:
            backend = self.connect(cluster.address, key, "the embedded cluster", cluster)
            connected = backend.wait_for_workers(nworkers, STARTUP_SECONDS)
            if connected < nworkers:
                what = f"embedded {self.TYPE} workers"
                raise RuntimeError(f"only {connected} of {nworkers} {what} connected within {STARTUP_SECONDS:g} s")
        except BaseException:
            cluster.kill()
            raise
        return backend
