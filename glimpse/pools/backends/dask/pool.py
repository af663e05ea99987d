"""``DaskPool`` and ``MakePool``: where a Dask pool runs, and the embedded cluster it may start.

Where a pool runs, first that applies: a ``client`` passed in; an ``address``;
``$DASK_SCHEDULER_ADDRESS`` or Dask's ``scheduler-address`` setting; else an embedded
``distributed.LocalCluster`` on 127.0.0.1 that the pool starts and shuts down. ``security=``
turns on TLS (Dask's own ``distributed.Security``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from typing import Any

import dask
from distributed import Client, LocalCluster, Security

from glimpse.pools.backends.dask import compat
from glimpse.pools.backends.dask.backend import DaskBackend
from glimpse.pools.backends.dask.launch import nanny_thread_caps
from glimpse.pools.cluster.pool import ClusterPool, resolve_address
from glimpse.pools.errors import ClusterConnectionError

ADDRESS_VARIABLE = "DASK_SCHEDULER_ADDRESS"
ENVIRONMENT = (ADDRESS_VARIABLE,)
CONNECT_SECONDS = 5.0


def MakePool(
    address: str | None = None,
    client: Client | None = None,
    security: Security | bool | None = None,
    *,
    initializer: Callable[..., object] | None = None,
    initargs: Iterable[Any] = (),
    **kwargs,
) -> DaskPool:
    """Return a :class:`DaskPool`; see it for the arguments."""
    return DaskPool(address, client, security, initializer=initializer, initargs=initargs, **kwargs)


class DaskPool(ClusterPool):
    """A pool whose chunks run as futures on a Dask cluster.

    Args:
        address: The scheduler's address (``tcp://host:8786``). Defaults to
            ``$DASK_SCHEDULER_ADDRESS``, then Dask's ``scheduler-address`` setting; without any,
            the pool starts a ``LocalCluster`` (one single-threaded worker process per core,
            on 127.0.0.1) and shuts it down on :meth:`close`.
        client: A ``distributed.Client`` to use instead; the pool never closes it.
        security: TLS, as Dask does it: a ``distributed.Security`` with the CA, certificate and
            key files of the cluster (``tls://`` addresses); ``True`` on an embedded cluster makes
            temporary credentials (``Security.temporary()``, needs ``pip install cryptography``).
            Without it, Dask's ``distributed.comm.tls`` settings apply.
        initializer, initargs: ``initializer(*initargs)`` runs once in each worker process before its
            first item, as multiprocessing's.
        **kwargs: Passed to ``LocalCluster`` for an embedded cluster, else to ``Client``.

    A pool pickles to its scheduler's address: a copy unpickled in another process or in a
    task connects to the same scheduler and never shuts down a cluster it did not start (used
    in a task, it leaves the worker's thread pool while it waits, as ``worker_client`` does).

    Leaving ``imap`` early cancels its pending chunks; Dask cannot interrupt a running task, so
    a worker still running a cancelled chunk a second later is restarted through its nanny.
    Like ``multiprocessing``, the embedded cluster imports the main module in its workers: a
    script makes the pool under ``if __name__ == "__main__":``.
    """

    def __init__(
        self,
        address: str | None = None,
        client: Client | None = None,
        security: Security | bool | None = None,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        **kwargs,
    ):
        if security is not None:
            kwargs["security"] = security
        backend = _backend(address, client, kwargs)
        self.cluster: LocalCluster | None = backend.cluster
        super().__init__(backend, backend.address, initializer=initializer, initargs=initargs)


def connect(address: str, source: str, **kwargs) -> Client:
    """A client of the scheduler at ``address``; ``ClusterConnectionError`` naming it if none answers."""
    kwargs.setdefault("timeout", CONNECT_SECONDS)
    if kwargs.get("security") is True:
        raise ValueError(
            "security=True makes temporary TLS credentials for an embedded cluster; to reach the scheduler at "
            f"{address}, pass distributed.Security(tls_ca_file=..., tls_client_cert=..., tls_client_key=...)"
        )
    try:
        return Client(address, set_as_default=False, **kwargs)
    except TypeError as exc:
        if address.startswith("tls://") and "ssl" in str(exc).lower():
            raise ClusterConnectionError(
                f"the Dask scheduler at {address} (from {source}) uses TLS, and no certificate was given: pass "
                "security=distributed.Security(tls_ca_file=..., tls_client_cert=..., tls_client_key=...) or set "
                "Dask's distributed.comm.tls settings"
            ) from None
        raise
    except (OSError, TimeoutError) as exc:
        raise ClusterConnectionError(
            f"no Dask scheduler answered at {address} (from {source}) within {kwargs['timeout']:g} s: {exc}. "
            f"Start one with `glimpse-cluster --type dask LaunchBroker` (or `dask scheduler`), "
            f"or fix the address."
        ) from None


def _backend(address: str | None, client: Client | None, kwargs: dict) -> DaskBackend:
    if client is not None:
        if kwargs:
            raise TypeError(f"with a client, DaskPool takes no other arguments; got {', '.join(kwargs)}")
        return DaskBackend(client)
    address, source = resolve_address(address, ADDRESS_VARIABLE)
    if address is None and dask.config.get("scheduler-address", None):
        address, source = dask.config.get("scheduler-address"), "Dask's scheduler-address setting"
    if address is None:
        cluster = _local_cluster(kwargs)
        return DaskBackend(Client(cluster, set_as_default=False), owns_client=True, cluster=cluster)
    reconnect = functools.partial(connect, address, source, **kwargs)
    return DaskBackend(reconnect(), owns_client=True, reconnect=reconnect)


def _local_cluster(kwargs: dict) -> LocalCluster:
    options = {"n_workers": os.cpu_count() or 1, "threads_per_worker": 1, "processes": True}
    options.update(host="127.0.0.1", dashboard_address="127.0.0.1:0")
    if kwargs.get("security") is True:
        kwargs["security"] = _temporary_security()
    security = kwargs.get("security")
    if isinstance(security, Security) and (security.require_encryption or security.tls_ca_file):
        options["protocol"] = "tls://"
    options.update(kwargs)
    # What each nanny sets in its worker process before starting it: Dask's caps and the others.
    spawn_environ = dask.config.get("distributed.nanny.pre-spawn-environ", {})
    spawn_environ = {**spawn_environ, **nanny_thread_caps(options["n_workers"] or os.cpu_count() or 1)}
    try:
        # A task whose worker dies twice is given up on (Dask's default is four times); the chunk
        # is then sent once more, so a function that kills its worker fails after four deaths.
        settings = {"distributed.scheduler.allowed-failures": 1, "distributed.nanny.pre-spawn-environ": spawn_environ}
        with dask.config.set(settings):
            return compat.NeverShrinkingLocalCluster(**options)
    except RuntimeError as exc:
        raise RuntimeError(
            f"could not start the embedded Dask cluster: {str(exc).rstrip('.')}. Dask starts its worker processes with "
            "multiprocessing's spawn, which imports the main module again: if your script makes the pool "
            'at import time, move that code under `if __name__ == "__main__":`.'
        ) from exc


def _temporary_security() -> Security:
    try:
        return Security.temporary()
    except ImportError:
        raise ImportError(
            "security=True makes temporary TLS credentials with the cryptography package: pip install cryptography"
        ) from None
