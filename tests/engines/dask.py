"""Dask pools: an embedded LocalCluster, and a separately started scheduler with two workers."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.engines._processes import free_port, start_process, stop_process_group, wait_for_port

POOLS = {"dask-embedded": "dask_embedded_pool", "dask-external": "dask_external_pool"}
# Dask cannot interrupt a running task, and glimpse never restarts the workers of a cluster it does not own.
LIMITS: dict[str, set[str]] = {"dask-external": {"finishes_cancelled_chunks", "keeps_timed_out_threads"}}

STARTUP_SECONDS = 60.0
# Without a dashboard Dask still serves /health on the dashboard address, all interfaces by default.
NO_DASHBOARD = ["--no-dashboard", "--dashboard-address", "127.0.0.1:0"]
# If pytest is killed before its teardown, the scheduler exits once idle this long, and then its
# workers a minute later; far longer than any test session.
ORPHAN_SECONDS = "1800"


@dataclass
class DaskCluster:
    """A scheduler and its workers, each started in its own process group."""

    address: str
    scheduler: object
    workers: list
    log_dir: Path

    def stop(self) -> None:
        for process in [*self.workers, self.scheduler]:
            stop_process_group(process)


def start_dask_cluster(log_dir: Path, nworkers: int = 2) -> DaskCluster:
    """Start ``dask scheduler`` and ``nworkers`` ``dask worker`` processes (1 thread each) on 127.0.0.1."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    log_dir.mkdir(parents=True, exist_ok=True)
    scheduler_log = log_dir / "scheduler.log"
    scheduler = start_process(
        [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port), *NO_DASHBOARD]
        + ["--idle-timeout", ORPHAN_SECONDS],
        scheduler_log,
    )
    cluster = DaskCluster(address, scheduler, [], log_dir)
    try:
        wait_for_port(port, STARTUP_SECONDS, scheduler, scheduler_log)
        for n in range(nworkers):
            cluster.workers.append(
                start_process(
                    [sys.executable, "-m", "dask", "worker", address, "--nthreads", "1", "--host", "127.0.0.1"]
                    + [*NO_DASHBOARD, "--name", f"worker-{n}", "--death-timeout", "60"],
                    log_dir / f"worker-{n}.log",
                )
            )
        if nworkers:
            with Client(address, timeout=STARTUP_SECONDS, set_as_default=False) as client:
                client.wait_for_workers(nworkers, timeout=STARTUP_SECONDS)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def dask_external_cluster(tmp_path_factory):
    pytest.importorskip("distributed")
    cluster = start_dask_cluster(tmp_path_factory.mktemp("dask-external"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def dask_embedded_pool():
    pytest.importorskip("distributed")
    import dask

    from glimpse.pools.dask_cluster import ADDRESS_VARIABLE, MakePool

    with pytest.MonkeyPatch.context() as patch, dask.config.set({"scheduler-address": None}):
        patch.delenv(ADDRESS_VARIABLE, raising=False)
        pool = MakePool()
    yield pool
    pool.terminate()
    pool.join()


@pytest.fixture(scope="session")
def dask_external_pool(dask_external_cluster):
    from glimpse.pools.dask_cluster import MakePool

    pool = MakePool(dask_external_cluster.address)
    yield pool
    pool.terminate()
    pool.join()
