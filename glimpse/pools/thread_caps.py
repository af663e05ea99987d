"""The BLAS and OpenMP thread caps of the worker processes glimpse starts.

Left alone, each of N worker processes doing numpy work starts one BLAS thread per core: N² threads
on N cores, which then wait for each other. So every worker process glimpse starts gets
``cores ÷ worker processes on that machine`` threads (at least 1) in each variable below, as Dask's
nanny (``distributed.nanny.pre-spawn-environ``) and Ray (``OMP_NUM_THREADS`` = a task's CPUs) do.
A variable the user has set is kept as it is, and a count set in ``OMP_NUM_THREADS`` alone is
the count of the others too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

#: The variables that size the thread pools of OpenMP, OpenBLAS, MKL, Apple's Accelerate and numexpr.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def capped_environment(env: Mapping[str, str], workers_here: int) -> dict[str, str]:
    """``env`` for a worker process, one of ``workers_here`` on this machine, with its thread pools capped."""
    return {**env, **missing_caps(env, workers_here)}


def missing_caps(env: Mapping[str, str], workers_here: int) -> dict[str, str]:
    """The caps ``env`` lacks: each variable of :data:`THREAD_VARIABLES` it does not set (or sets
    empty), as :func:`threads_per_worker`; or, if the user set ``OMP_NUM_THREADS``, that count
    (OpenBLAS and MKL read their own variable first, and would not follow it)."""
    chosen = env.get("OMP_NUM_THREADS", "")
    threads = int(chosen) if chosen.isdigit() and int(chosen) > 0 else threads_per_worker(workers_here)
    caps = {name: str(threads) for name in THREAD_VARIABLES if not env.get(name)}
    if "NUMEXPR_NUM_THREADS" in caps:
        caps["NUMEXPR_NUM_THREADS"] = str(min(threads, _numexpr_pool_size(env)))
    return caps


@contextlib.contextmanager
def inherited_caps(workers_here: int) -> Iterator[None]:
    """Set the caps this process's environment lacks while an engine starts processes that inherit
    it (Ray's raylet and its workers), then remove them."""
    added = missing_caps(os.environ, workers_here)
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def threads_per_worker(workers_here: int) -> int:
    """The cores this process may run on, shared among ``workers_here`` worker processes; at least 1."""
    return max(1, available_cores() // max(1, workers_here))


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _numexpr_pool_size(env: Mapping[str, str]) -> int:
    """numexpr's largest thread count (it refuses more): ``$NUMEXPR_MAX_THREADS``, else 64."""
    try:
        return max(1, int(env.get("NUMEXPR_MAX_THREADS") or 64))
    except ValueError:
        return 64
