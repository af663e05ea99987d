"""Gearman pools: an embedded gearmand and workers, and a gearmand started as a lab runs it with two workers."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.engines._processes import free_port, start_process, stop_process_group, wait_for_port

POOLS = {"gearman-embedded": "gearman_embedded_pool", "gearman-external": "gearman_external_pool"}
LIMITS: dict[str, set[str]] = {}

STARTUP_SECONDS = 60.0


def gearmand_or_skip() -> str:
    from glimpse.pools.backends.gearman.server import GearmandMissing, find_gearmand

    try:
        return find_gearmand()
    except GearmandMissing as exc:
        pytest.skip(str(exc))


@dataclass
class GearmanCluster:
    """gearmand and its worker processes, each started in its own process group."""

    address: str
    server: subprocess.Popen
    log_dir: Path
    workers: list[subprocess.Popen] = field(default_factory=list)

    def add_workers(self, nworkers: int, env: dict | None = None) -> subprocess.Popen:
        """Start one ``LaunchWorker`` process with ``nworkers`` slots and wait until they can take jobs."""
        from glimpse.pools.backends.gearman import protocol as g
        from glimpse.pools.backends.gearman.backend import GearmanBackend
        from glimpse.pools.security import resolve_key

        backend = GearmanBackend(g.parse_servers(self.address), resolve_key())
        try:
            expected = backend.wait_for_workers(0, 0) + nworkers
            process = start_process(
                [*_cli(), "LaunchWorker", "--address", self.address, "--nworkers", str(nworkers)],
                self.log_dir / f"workers-{len(self.workers)}.log",
                env=env,
            )
            self.workers.append(process)
            connected = backend.wait_for_workers(expected, STARTUP_SECONDS)
        finally:
            backend.close()
        assert connected >= expected, f"{connected} of {expected} gearman workers connected; see {self.log_dir}"
        return process

    def stop(self) -> None:
        for process in [*self.workers, self.server]:
            stop_process_group(process)


def start_gearman_cluster(log_dir: Path, nworkers: int = 2) -> GearmanCluster:
    """Start gearmand on a free port of 127.0.0.1, as a lab would, and one ``LaunchWorker --nworkers N``."""
    gearmand = gearmand_or_skip()
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    server_log = log_dir / "gearmand.log"
    server = start_process(
        [gearmand, "--listen=127.0.0.1", f"--port={port}", "--log-file=stderr", "--threads=2"]
        + [f"--pid-file={log_dir / 'gearmand.pid'}"],
        server_log,
    )
    cluster = GearmanCluster(f"127.0.0.1:{port}", server, log_dir)
    try:
        wait_for_port(port, STARTUP_SECONDS, server, server_log)
        if nworkers:
            cluster.add_workers(nworkers)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _cli() -> list[str]:
    return [sys.executable, "-m", "glimpse.pools.cli", "--type", "gearman"]


@pytest.fixture(scope="session")
def gearman_external_cluster(tmp_path_factory):
    cluster = start_gearman_cluster(tmp_path_factory.mktemp("gearman-external"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def gearman_embedded_pool():
    gearmand_or_skip()
    from glimpse.pools.gearman_cluster import ADDRESS_VARIABLE, MakePool

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(ADDRESS_VARIABLE, raising=False)
        pool = MakePool(workers=2)
    yield pool
    pool.terminate()
    pool.join()


@pytest.fixture(scope="session")
def gearman_external_pool(gearman_external_cluster):
    from glimpse.pools.gearman_cluster import MakePool

    pool = MakePool(gearman_external_cluster.address)
    yield pool
    pool.terminate()
    pool.join()
