"""Every use of Dask's private internals, in one place. Checked on distributed 2024.1 to 2026.8.

``tests/test_compat.py`` calls :func:`missing` so an upgrade that removes one fails loudly there.
"""

from __future__ import annotations

from distributed import LocalCluster
from distributed.deploy.cluster import Cluster
from distributed.threadpoolexecutor import thread_state as _pool_thread
from distributed.utils import thread_state as _task_thread


class NeverShrinkingLocalCluster(LocalCluster):
    """A ``LocalCluster`` that never gives up on a worker: its nannies restart the workers that die.

    Private: ``SpecCluster._update_worker_status``. SpecCluster closes the nanny of a worker not
    back within ``distributed.deploy.lost-worker-timeout``, which a function that keeps killing
    its workers triggers while the nanny restarts it; the cluster then shrinks for good and
    tasks can wait forever (related: dask/distributed#7312). The base ``Cluster`` method only
    keeps the scheduler info.
    """

    def _update_worker_status(self, op, msg) -> None:
        Cluster._update_worker_status(self, op, msg)


def running_a_task_in_pool_thread() -> bool:
    """Whether this thread runs a Dask task and still belongs to the worker's thread pool.

    Private: ``distributed.utils.thread_state.key`` (the running task) and
    ``distributed.threadpoolexecutor.thread_state.proceed`` (cleared by ``secede()``). Dask keeps
    no public flag for either; ``get_worker()`` alone is also true in a seceded thread.
    """
    return getattr(_task_thread, "key", None) is not None and bool(getattr(_pool_thread, "proceed", False))


def missing() -> list[str]:
    """The private names this module relies on that the installed Dask lacks."""
    gone = []
    for owner, name in ((Cluster, "_update_worker_status"), (LocalCluster, "_update_worker_status")):
        if not callable(getattr(owner, name, None)):
            gone.append(f"{owner.__qualname__}.{name}")
    import distributed.threadpoolexecutor as pool_module
    import distributed.utils as utils_module

    for module, name in ((utils_module, "thread_state"), (pool_module, "thread_state")):
        if getattr(module, name, None) is None:
            gone.append(f"{module.__name__}.{name}")
    return gone
