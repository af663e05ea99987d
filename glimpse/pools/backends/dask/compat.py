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


#: The reasons a Dask worker gives, in its log line "Stopping worker at ADDRESS. Reason: REASON",
#: when it closes because it lost its scheduler (not because the scheduler retired it). Private:
#: ``Worker.handle_scheduler`` and ``Worker.heartbeat``; Dask dropped its own reconnecting in 2023.
LOST_SCHEDULER_REASONS = ("worker-handle-scheduler-connection-broken", "worker-heartbeat-missing")


def closed_for_lost_scheduler(log_line: str) -> bool:
    """Whether ``log_line`` of a Dask worker says it closes because it lost its scheduler."""
    return "Stopping worker" in log_line and any(f"Reason: {reason}" in log_line for reason in LOST_SCHEDULER_REASONS)


def gather(client, futures: list, timeout: float) -> list:
    """``client.gather(futures)``, given up after ``timeout`` seconds (``TimeoutError``).

    Private: ``Client._gather``. ``Client.gather`` takes no timeout (``Future.result`` does, for
    one future at a time), and one gather for many results is what makes fetching them cheap.
    """
    return client.sync(client._gather, futures, callback_timeout=timeout)


def missing() -> list[str]:
    """The private names this module relies on that the installed Dask lacks."""
    gone = []
    from distributed import Client

    owners = ((Cluster, "_update_worker_status"), (LocalCluster, "_update_worker_status"), (Client, "_gather"))
    for owner, name in owners:
        if not callable(getattr(owner, name, None)):
            gone.append(f"{owner.__qualname__}.{name}")
    import distributed.threadpoolexecutor as pool_module
    import distributed.utils as utils_module

    for module, name in ((utils_module, "thread_state"), (pool_module, "thread_state")):
        if getattr(module, name, None) is None:
            gone.append(f"{module.__name__}.{name}")
    gone += _missing_worker_texts()
    return gone


def _missing_worker_texts() -> list[str]:
    import inspect

    from distributed import Worker

    source = inspect.getsource(Worker)
    texts = ("Stopping worker at %s. Reason: %s", *LOST_SCHEDULER_REASONS)
    return [f"Worker's log text {text!r}" for text in texts if text not in source]
