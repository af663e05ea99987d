"""``RayPool`` and ``MakePool``: which Ray a pool runs on.

Where a pool runs, first that applies: an ``address``; ``$RAY_ADDRESS`` (``auto``,
``host:port``, ``ray://host:port``); a Ray already initialized in this process (used as it is);
else an embedded Ray on 127.0.0.1 that the pool starts and shuts down on ``close()``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import ray

from glimpse.pools.backends.ray.backend import RayBackend
from glimpse.pools.backends.ray.connection import connect, current_address, same_cluster, start_embedded
from glimpse.pools.cluster.pool import ClusterPool, resolve_address
from glimpse.pools.errors import ClusterConnectionError
from glimpse.pools.thread_caps import inherited_caps

ADDRESS_VARIABLE = "RAY_ADDRESS"
ENVIRONMENT = (ADDRESS_VARIABLE,)


def MakePool(
    address: str | None = None,
    *,
    initializer: Callable[..., object] | None = None,
    initargs: Iterable[Any] = (),
    **init_kwargs,
) -> RayPool:
    """Return a :class:`RayPool`; see it for the arguments."""
    return RayPool(address, initializer=initializer, initargs=initargs, **init_kwargs)


class RayPool(ClusterPool):
    """A pool whose chunks run as Ray tasks.

    Args:
        address: A Ray cluster's address: ``host:port`` of its head node, ``ray://host:port``
            (Ray Client) or ``auto`` (the cluster ``ray start`` last started on this machine).
            Defaults to ``$RAY_ADDRESS``, then to the Ray this process already initialized; without
            any, the pool starts Ray here (one CPU per core, on 127.0.0.1, no dashboard, usage
            stats off) and shuts it down on :meth:`close`. An address never starts a new Ray.
        initializer, initargs: ``initializer(*initargs)`` runs once in each worker process before its
            first item, as multiprocessing's.
        **init_kwargs: Passed to ``ray.init`` (``runtime_env``, ``namespace``, ``_temp_dir``, ...).

    Workers must be able to import ``glimpse.pools`` (install ``glimpse-pools`` on every node).
    A pool pickles to its cluster's address: a copy unpickled in a Ray task or in another
    process uses the Ray connected there, and never shuts down a Ray it did not start.
    """

    cluster = None

    def __init__(
        self,
        address: str | None = None,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        **init_kwargs,
    ):
        address, owns_ray = _join_ray(address, init_kwargs)
        # Not ended when dropped: Ray is one per process, and a later pool may be using it.
        client = address.startswith("ray://")
        probed = "" if address == "auto" else address.removeprefix("ray://")
        backend = RayBackend(owns_ray=owns_ray, address=probed, client=client)
        super().__init__(backend, address, end_when_dropped=False, initializer=initializer, initargs=initargs)


def _join_ray(address: str | None, init_kwargs: dict) -> tuple[str, bool]:
    """Connect this process to Ray as the module docstring says; return its address and whether
    the pool owns the connection (and so shuts it down)."""
    address, source = resolve_address(address, ADDRESS_VARIABLE)
    if ray.is_initialized():
        current = current_address(address)
        if address is not None and not same_cluster(address, current):
            raise ClusterConnectionError(
                f"this process is already connected to the Ray cluster at {current}, so it cannot connect "
                f"to {address} (from {source}): Ray allows one cluster per process. Call ray.shutdown() "
                "first, or make the pool without an address to use the connected cluster."
            )
        return _kept_if_client(address, current), False
    if address is None:
        # Ray caps OMP_NUM_THREADS in its workers itself; the raylet passes the other caps on.
        with inherited_caps(init_kwargs.get("num_cpus") or os.cpu_count() or 1):
            start_embedded(init_kwargs)
    else:
        connect(address, source, init_kwargs)
    return _kept_if_client(address, current_address(address)), True


def _kept_if_client(address: str | None, current: str) -> str:
    """A Ray Client pool's address stays ``ray://``: its copies connect through Ray Client too (the
    GCS address serves only processes on a node)."""
    return address if address is not None and address.startswith("ray://") else current
