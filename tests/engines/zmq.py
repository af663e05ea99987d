"""ZeroMQ pools: an embedded broker and workers, and a separately started broker with two workers."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.engines._processes import free_port, start_process, stop_process_group, wait_for_port

POOLS = {"zmq-embedded": "zmq_embedded_pool", "zmq-external": "zmq_external_pool"}
LIMITS: dict[str, set[str]] = {}

STARTUP_SECONDS = 60.0


@dataclass
class ZmqCluster:
    """A broker and its worker processes, each started in its own process group."""

    address: str
    broker: subprocess.Popen
    log_dir: Path
    workers: list[subprocess.Popen] = field(default_factory=list)

    def add_workers(self, nworkers: int) -> subprocess.Popen:
        """Start one ``LaunchWorker`` process with ``nworkers`` slots and wait until they connect."""
        from glimpse.pools.backends.zmq.backend import ZmqBackend
        from glimpse.pools.security import resolve_key

        backend = ZmqBackend(self.address, resolve_key())
        try:
            expected = backend.wait_for_workers(0, 0) + nworkers
            process = start_process(
                [*_cli(), "LaunchWorker", "--address", self.address, "--nworkers", str(nworkers)],
                self.log_dir / f"workers-{len(self.workers)}.log",
            )
            self.workers.append(process)
            connected = backend.wait_for_workers(expected, STARTUP_SECONDS)
        finally:
            backend.close()
        assert connected >= expected, f"{connected} of {expected} zmq workers connected; see {self.log_dir}"
        return process

    def stop(self) -> None:
        for process in [*self.workers, self.broker]:
            stop_process_group(process)


def start_zmq_cluster(
    log_dir: Path, nworkers: int = 2, broker_env: dict | None = None, broker_slots: int = 0
) -> ZmqCluster:
    """Start ``LaunchBroker --nworkers broker_slots`` on a free port of 127.0.0.1 and one
    ``LaunchWorker --nworkers N``.

    Both use the session's cluster key (``$GLIMPSE_CLUSTER_KEY_FILE``, set by conftest)."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    broker_log = log_dir / "broker.log"
    command = [*_cli(), "LaunchBroker", "--port", str(port), "--nworkers", str(broker_slots)]
    broker = start_process(command, broker_log, env=broker_env)
    cluster = ZmqCluster(f"tcp://127.0.0.1:{port}", broker, log_dir)
    try:
        wait_for_port(port, STARTUP_SECONDS, broker, broker_log)
        if nworkers:
            cluster.add_workers(nworkers)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _cli() -> list[str]:
    return [sys.executable, "-m", "glimpse.pools.cli", "--type", "zmq"]


@pytest.fixture(scope="session")
def zmq_external_cluster(tmp_path_factory):
    pytest.importorskip("zmq")
    cluster = start_zmq_cluster(tmp_path_factory.mktemp("zmq-external"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def zmq_embedded_pool():
    pytest.importorskip("zmq")
    from glimpse.pools.zmq_cluster import ADDRESS_VARIABLE, MakePool

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(ADDRESS_VARIABLE, raising=False)
        pool = MakePool(workers=2)
    yield pool
    pool.terminate()
    pool.join()


@pytest.fixture(scope="session")
def zmq_external_pool(zmq_external_cluster):
    from glimpse.pools.zmq_cluster import MakePool

    pool = MakePool(zmq_external_cluster.address)
    yield pool
    pool.terminate()
    pool.join()
