"""IPython parallel pools: the pool's own embedded cluster, and a cluster started with ``ipcluster start``.

Engines that ``ipcluster`` runs are not replaced when they die, so the external kind skips the
worker-death tests; the embedded pool replaces its dead engines and runs them.
"""

from __future__ import annotations

import contextlib
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.engines._processes import start_process, stop_process_group

POOLS = {"ipython-embedded": "ipython_embedded_pool", "ipython-external": "ipython_external_pool"}
LIMITS = {"ipython-external": {"no_worker_replacement", "keeps_timed_out_threads"}}

_START_SECONDS = 90.0
_GUARD = [sys.executable, "-m", "glimpse.pools.backends.ipython.guard"]
# Guards end the controller and engines if ipcluster dies without stopping them (they run in
# sessions of their own, out of reach of ipcluster's process group).
_IPCLUSTER_CONFIG = f"""
c.LocalControllerLauncher.controller_cmd = {[*_GUARD, sys.executable, "-m", "ipyparallel.controller"]!r}
c.LocalEngineLauncher.engine_cmd = {[*_GUARD, sys.executable, "-m", "ipyparallel.engine"]!r}
c.IPClusterStart.early_shutdown = 0
"""


@dataclass
class IPCluster:
    """A running ``ipcluster start``: where it is and the process that owns it."""

    profile_dir: Path
    cluster_id: str
    log: Path

    @property
    def options(self) -> list[str]:
        return [f"--profile-dir={self.profile_dir}", f"--cluster-id={self.cluster_id}"]


@contextlib.contextmanager
def running_ipcluster(root: Path, engines: int = 2) -> Iterator[IPCluster]:
    """Run ``ipcluster start -n N`` on 127.0.0.1 in its own process group; end the group afterwards."""
    ipyparallel = pytest.importorskip("ipyparallel")
    profile_dir = root / "profile"
    (profile_dir / "security").mkdir(parents=True, exist_ok=True)
    (profile_dir / "ipcluster_config.py").write_text(_IPCLUSTER_CONFIG)
    cluster = IPCluster(profile_dir, f"test-{uuid.uuid4().hex[:8]}", root / "ipcluster.log")
    process = start_process(
        ["ipcluster", "start", f"-n={engines}", "--ip=127.0.0.1", *cluster.options],
        cluster.log,
        env={"IPYTHONDIR": str(root / "ipython")},
    )
    try:
        _wait_for_engines(ipyparallel, cluster, engines, process)
        yield cluster
    finally:
        stop_process_group(process)


@contextlib.contextmanager
def isolated_ipython_dir(root: Path) -> Iterator[None]:
    """Run with no GLIMPSE_IPYTHON_* variable set and ``root`` as the IPython directory."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("IPYTHONDIR", str(root))
        for name in ("GLIMPSE_IPYTHON_PROFILE", "GLIMPSE_IPYTHON_PROFILE_DIR", "GLIMPSE_IPYTHON_CLUSTER_ID"):
            monkeypatch.delenv(name, raising=False)
        yield


@pytest.fixture(scope="session", autouse=True)
def _ipython_dir_of_the_session(tmp_path_factory) -> Iterator[None]:
    """Keep IPython (and the engines and controllers tests start) out of ~/.ipython."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("IPYTHONDIR", str(tmp_path_factory.mktemp("ipython-home")))
        yield


@pytest.fixture(scope="session")
def ipython_embedded_pool(tmp_path_factory):
    pytest.importorskip("ipyparallel")
    from glimpse.pools.ipython_cluster import MakePool

    with isolated_ipython_dir(tmp_path_factory.mktemp("ipython-dir")):
        pool = MakePool()
    yield pool
    pool.terminate()
    pool.join()


@pytest.fixture(scope="session")
def ipython_external_cluster(tmp_path_factory) -> Iterator[IPCluster]:
    with running_ipcluster(tmp_path_factory.mktemp("ipcluster")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def ipython_external_pool(ipython_external_cluster):
    from glimpse.pools.ipython_cluster import MakePool

    pool = MakePool(
        profile_dir=str(ipython_external_cluster.profile_dir), cluster_id=ipython_external_cluster.cluster_id
    )
    yield pool
    pool.close()
    pool.join()


def _wait_for_engines(ipyparallel, cluster: IPCluster, engines: int, process) -> None:
    client_file = cluster.profile_dir / "security" / f"ipcontroller-{cluster.cluster_id}-client.json"
    deadline = time.monotonic() + _START_SECONDS
    while not client_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ipcluster did not start a controller:\n{_tail(cluster.log)}")
        time.sleep(0.2)
    client = ipyparallel.Client(str(client_file), timeout=30)
    try:
        client.wait_for_engines(engines, timeout=max(1.0, deadline - time.monotonic()))
    except TimeoutError as exc:
        raise RuntimeError(f"ipcluster did not start {engines} engines:\n{_tail(cluster.log)}") from exc
    finally:
        client.close()


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""
