"""A joblib backend named ``glimpse``: ``joblib.Parallel``, and scikit-learn's ``n_jobs``, on any pool.

>>> import joblib
>>> import glimpse.pools.joblib                     # registers the backend "glimpse"
>>> with joblib.parallel_config(backend="glimpse", pool=pool):
...     scores = cross_val_score(model, X, y, cv=5, n_jobs=-1)

Without ``pool=``, the work runs on :func:`default_pool`, one pool per process made by
:func:`glimpse.pools.MakePool` (``$GLIMPSE_POOL``, many cores by default) on first use. A pool
given is never closed by the backend: its owner closes it.

Each batch joblib makes (it groups small calls itself, as for its own backends) is one
``pool.submit``; the pool sends the batches that queue up together as one chunk. An error is the
exception the function raised, with the worker's traceback chained as its ``__cause__``. When a
call ends early (an error, or a ``return_as="generator"`` consumer that stops), the batches not
yet taken into a chunk are cancelled; those already taken run to their end, unseen. A
``Parallel`` call inside a task runs with joblib's own backend for nested calls (threads, then
one at a time), never on the pool again: workers waiting for work that needs a free worker
would wait forever.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

try:
    from joblib.parallel import AutoBatchingMixin, ParallelBackendBase, register_parallel_backend
except ImportError as exc:
    raise ImportError(
        "glimpse.pools.joblib needs joblib, which is not installed; "
        'run: pip install joblib (or pip install "glimpse-pools[joblib]")',
        name="joblib",
    ) from exc

if TYPE_CHECKING:
    from glimpse.pools.contract.pool import Pool

#: The name to give ``joblib.parallel_config(backend=...)`` or ``joblib.Parallel(backend=...)``.
BACKEND_NAME = "glimpse"


class GlimpseBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]  # joblib ships no types
    """joblib's backend interface over a glimpse pool: ``pool`` if given, else :func:`default_pool`.

    joblib makes one instance per ``parallel_config`` block (or per ``Parallel`` naming the
    backend) and calls :meth:`configure` and :meth:`terminate` around every ``Parallel`` call in
    it, so neither makes nor ends a pool.
    """

    #: ``n_jobs`` left unset means every worker of the pool.
    default_n_jobs = -1
    supports_retrieve_callback = True
    uses_threads = False
    supports_sharedmem = False

    def __init__(
        self, pool: Pool | None = None, nesting_level: int | None = None, inner_max_num_threads: int | None = None
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self._pool = pool
        self._lock = threading.Lock()
        self._futures: set[Future[Any]] = set()

    @property
    def pool(self) -> Pool:
        """The pool the batches run on."""
        return self._pool if self._pool is not None else default_pool()

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """How many batches joblib keeps going at once: ``n_jobs``, counted from the pool's workers
        when negative (``-1``: all of them). Called by joblib once per ``Parallel`` call.

        joblib runs a call in the caller, without the backend, when this is 1; so it is 1 only
        for ``n_jobs=1``, and at least 2 otherwise, so the work goes to the pool even when it has
        a single worker (or none connected yet).
        """
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs == 1:
            return 1
        if n_jobs < 0:
            n_jobs = _workers(self.pool) + 1 + n_jobs
        return max(2, n_jobs)

    def configure(self, n_jobs: int = 1, parallel: Any = None, **backend_kwargs: Any) -> int:
        """Called by joblib at the start of each ``Parallel`` call: the number of batches to keep going."""
        self.parallel = parallel
        return self.effective_n_jobs(n_jobs)

    def submit(self, func: Callable[[], Any], callback: Callable[[Future[Any]], object] | None = None) -> Future[Any]:
        """Run one batch (``func()``) on the pool; ``callback(future)`` runs once it has ended."""
        future = self.pool.submit(func)
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    apply_async = submit  # the name joblib before 1.5 calls (checked on 1.3.2; 1.6.0 calls submit)

    def retrieve_result_callback(self, out: Future[Any]) -> Any:
        """The batch's results, or the exception it raised (the worker's traceback as its ``__cause__``)."""
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel the batches not yet taken into a chunk. Called by joblib when a call ends early;
        the backend stays ready for the next call either way (the pool is not its to end)."""
        with self._lock:
            futures = list(self._futures)
        for future in futures:
            future.cancel()  # outside the lock: joblib's callback runs here, and may submit

    def terminate(self) -> None:
        """Called by joblib at the end of each ``Parallel`` call: the pool stays open."""
        self.reset_batch_stats()

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)


def register() -> None:
    """Register the backend with joblib as ``"glimpse"`` (importing this module already does)."""
    register_parallel_backend(BACKEND_NAME, GlimpseBackend)


def default_pool() -> Pool:
    """The pool the backend runs on when ``parallel_config`` names none.

    ``glimpse.pools.MakePool()`` makes it on first use, and every later call in this process
    uses it again: joblib configures its backend anew for every ``Parallel`` call (scikit-learn
    makes many), and a pool per call would start its workers, or its cluster, every time. It
    is terminated when the interpreter exits; :func:`close_default_pool` ends it sooner (do not
    close it yourself). A process forked from one that had it makes its own.
    """
    global _default, _default_pid, _exit_hook_registered
    with _default_lock:
        if _default is None or _default_pid != os.getpid():
            from glimpse.pools.registry import MakePool

            _default, _default_pid = MakePool(), os.getpid()
            if not _exit_hook_registered:
                atexit.register(_terminate_default_pool)
                _exit_hook_registered = True
        return _default


def close_default_pool() -> None:
    """Close the default pool and wait for its workers to exit; the next use makes a new one."""
    pool = _take_default_pool()
    if pool is not None:
        pool.close()
        pool.join()


_default: Pool | None = None
_default_pid = 0
_default_lock = threading.Lock()
_exit_hook_registered = False


def _take_default_pool() -> Pool | None:
    """The default pool this process made, which is no longer the default."""
    global _default
    with _default_lock:
        pool, _default = _default, None
    return pool if _default_pid == os.getpid() else None


def _terminate_default_pool() -> None:
    pool = _take_default_pool()
    if pool is not None:
        pool.terminate()
        pool.join()


def _workers(pool: Pool) -> int:
    return pool.workers()


register()
