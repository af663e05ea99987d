"""Worker processes glimpse starts run with their BLAS and OpenMP thread pools capped (see ``thread_caps``)."""

from __future__ import annotations

import os
import sys

import cloudpickle
import pytest

from glimpse.pools import MulticorePool
from glimpse.pools.thread_caps import THREAD_VARIABLES, capped_environment, threads_per_worker

# Workers of external clusters cannot import the test package: this module's functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: Clusters the tests start without glimpse: only their engine caps their workers, and only these.
CAPPED_BY_ENGINE_ONLY = {
    "dask-external": ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"),
    "ray-external": ("OMP_NUM_THREADS",),
    "ipython-external": (),
}


def thread_settings(_item) -> dict[str, str | None]:
    """The thread variables of the worker process that runs this item."""
    return {name: os.environ.get(name) for name in THREAD_VARIABLES}


def test_capped_environment_fills_what_is_unset_and_keeps_what_is_set():
    env = capped_environment({"OPENBLAS_NUM_THREADS": "7", "MKL_NUM_THREADS": "", "PATH": "/bin"}, workers_here=1)
    assert env["OPENBLAS_NUM_THREADS"] == "7", "a value the user set must be kept"
    assert env["MKL_NUM_THREADS"] == str(threads_per_worker(1)), "an empty value counts as unset"
    assert env["OMP_NUM_THREADS"] == str(threads_per_worker(1))
    assert env["PATH"] == "/bin"
    assert set(THREAD_VARIABLES) <= set(env)


def test_a_count_set_in_omp_num_threads_alone_is_the_count_of_every_library():
    env = capped_environment({"OMP_NUM_THREADS": "8", "MKL_NUM_THREADS": "3"}, workers_here=64)
    assert {name: env[name] for name in THREAD_VARIABLES} == {
        "OMP_NUM_THREADS": "8",
        "OPENBLAS_NUM_THREADS": "8",
        "MKL_NUM_THREADS": "3",
        "VECLIB_MAXIMUM_THREADS": "8",
        "NUMEXPR_NUM_THREADS": "8",
    }


def test_numexpr_gets_no_more_threads_than_its_pool_holds():
    assert capped_environment({"NUMEXPR_MAX_THREADS": "1"}, workers_here=1)["NUMEXPR_NUM_THREADS"] == "1"


def test_threads_per_worker_shares_the_cores_and_is_at_least_one():
    cores = threads_per_worker(1)
    assert cores >= 1
    assert threads_per_worker(cores * 4) == 1
    assert threads_per_worker(0) == cores


def test_workers_run_with_thread_caps(pool, pool_kind, limits):
    if "in_process" in limits:
        pytest.skip("SinglecorePool runs items in the caller's process, whose environment glimpse leaves alone")
    capped = CAPPED_BY_ENGINE_ONLY.get(pool_kind, THREAD_VARIABLES)
    if not capped:
        pytest.skip(f"{pool_kind}: a cluster glimpse did not start, whose engine caps no thread pool")
    # The test clusters run one worker process per core of this machine.
    expected = {name: os.environ.get(name) or str(threads_per_worker(pool.workers())) for name in capped}
    for seen in pool.map(thread_settings, range(4 * pool.workers()), chunksize=1):
        assert {name: seen[name] for name in capped} == expected, f"{pool_kind} workers' thread settings: {seen}"


@pytest.mark.parametrize("kind", ["multicore", "zmq-embedded"])
def test_a_thread_setting_of_the_user_is_kept(kind, monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    for name in set(THREAD_VARIABLES) - {"OPENBLAS_NUM_THREADS"}:
        monkeypatch.delenv(name, raising=False)
    with _new_pool(kind, monkeypatch) as pool:
        seen = pool.map(thread_settings, range(4), chunksize=1)
    assert all(s["OPENBLAS_NUM_THREADS"] == "3" for s in seen), f"OPENBLAS_NUM_THREADS=3 was not kept: {seen}"
    assert all(s["MKL_NUM_THREADS"] == str(threads_per_worker(2)) for s in seen), f"MKL is not capped: {seen}"
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    with _new_pool(kind, monkeypatch) as pool:
        seen = pool.map(thread_settings, range(4), chunksize=1)
    assert all(s["MKL_NUM_THREADS"] == "5" for s in seen), f"the user's OMP_NUM_THREADS=5 was not followed: {seen}"


def _new_pool(kind: str, monkeypatch):
    if kind == "multicore":
        return MulticorePool(2)
    pytest.importorskip("zmq")
    from glimpse.pools.zmq_cluster import ADDRESS_VARIABLE, MakePool

    monkeypatch.delenv(ADDRESS_VARIABLE, raising=False)
    return MakePool(workers=2)
