"""Ray pools: Ray embedded in the test process, and a ``ray start --head`` cluster on 127.0.0.1.

A process holds one Ray connection at a time, so the tests of one kind run before those of the
other (see ``pytest_collection_modifyitems``), and each pool fixture first closes the other's pool. The head node
runs in its own process group, is reached through ``RAY_ADDRESS``, and is ended by its group
id. Token authentication is on, as by default, with the token in a temporary file.
"""

from __future__ import annotations

import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.engines._processes import free_port, start_process, stop_process_group, wait_for_port

POOLS = {"ray-embedded": "ray_embedded_pool", "ray-external": "ray_external_pool"}

#: Environment of Ray processes started by tests: usage stats off, and a node address of
#: 127.0.0.1 kept as it is (Ray otherwise swaps in the machine's network address).
RAY_NODE_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

_connected: list = []


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    """Move the tests of each Ray pool kind together, in the slots the Ray tests already hold.

    pytest interleaves kinds when tests have parameters of their own, and switching between
    the embedded Ray and the cluster would mean starting Ray again each time.
    """
    kinds = list(POOLS)
    slots = [index for index, item in enumerate(items) if _ray_kind(item)]
    grouped = sorted((items[index] for index in slots), key=lambda item: kinds.index(_ray_kind(item)))
    for index, item in zip(slots, grouped, strict=True):
        items[index] = item


@pytest.fixture(scope="session")
def ray_auth_token():
    """Ray's default token authentication, with the token in a temporary file, not ~/.ray."""
    folder = Path(tempfile.mkdtemp(prefix="glimpse-ray-auth-"))
    path = folder / "auth_token"
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        yield path
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_temp_dir():
    """A short temp dir for Ray's session files (its socket paths must stay under 108 bytes)."""
    folder = tempfile.mkdtemp(prefix="glimpse-ray-")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def start_ray_head(temp_dir: str, num_cpus: int = 2):
    """Start ``ray start --head`` on 127.0.0.1 in its own process group; return it and its address."""
    port = free_port()
    log_path = Path(temp_dir) / "head.log"
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block"]
    command += ["--node-ip-address=127.0.0.1", f"--port={port}", f"--num-cpus={num_cpus}", "--include-dashboard=false"]
    command += ["--disable-usage-stats", f"--temp-dir={temp_dir}"]
    process = start_process(command, log_path, env=RAY_NODE_ENV)
    try:
        wait_for_port(port, 60, process, log_path)
        _wait_for_log(log_path, "Ray runtime started", 60, process)
    except BaseException:
        stop_process_group(process, grace=5)
        raise
    return process, f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def ray_head(ray_auth_token, ray_temp_dir) -> str:
    """The address of a ``ray start --head`` node with 2 CPUs on 127.0.0.1."""
    pytest.importorskip("ray")
    process, address = start_ray_head(ray_temp_dir)
    try:
        yield address
    finally:
        stop_process_group(process, grace=5)


@pytest.fixture(scope="session")
def ray_embedded_pool(ray_auth_token, ray_temp_dir):
    pytest.importorskip("ray")
    from glimpse.pools.ray_cluster import RayPool

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("RAY_ADDRESS", raising=False)
        pool = _take_connection(lambda: RayPool(_temp_dir=ray_temp_dir))
    yield pool
    _release(pool)


@pytest.fixture(scope="session")
def ray_external_pool(ray_head):
    from glimpse.pools.ray_cluster import RayPool

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_ADDRESS", ray_head)
        pool = _take_connection(RayPool)
    assert pool.address == ray_head, f"the pool connected to {pool.address}, not to {ray_head}"
    yield pool
    _release(pool)


def _take_connection(make_pool):
    for pool in list(_connected):
        _release(pool)
    pool = make_pool()
    _connected.append(pool)
    return pool


def _release(pool) -> None:
    if pool in _connected:
        _connected.remove(pool)
        pool.close()
        pool.join()


def _ray_kind(item) -> str | None:
    callspec = getattr(item, "callspec", None)
    kind = callspec.params.get("pool_kind") if callspec is not None else None
    return kind if kind in POOLS else None


def _wait_for_log(path: Path, text: str, timeout: float, process) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise RuntimeError(
        f"{text!r} did not appear in {path} within {timeout}s:\n{path.read_text(errors='replace')[-4000:]}"
    )
