"""A glimpse ZeroMQ cluster across hosts: the broker on one, workers on two others, the caller on a
fourth; keys copied as an admin would; a worker host and the broker going silent mid-call."""

from __future__ import annotations

import secrets
import sys
import threading
import time

import pytest

from tests import helpers
from tests.multihost import Hosts

pytest.importorskip("zmq")

PORT = 5555
STARTUP_SECONDS = 60.0


@pytest.fixture(scope="module")
def cluster(hosts: Hosts, tmp_path_factory):
    """``LaunchBroker --host <head's address>`` on host ``head``, ``LaunchWorker`` with two slots on
    ``w1`` and ``w2``; the key in each host's default key file, and in a file of the caller's."""
    logs = tmp_path_factory.mktemp("zmq-multihost-logs")
    key = secrets.token_hex(32)
    head, w1, w2 = hosts.add("head"), hosts.add("w1"), hosts.add("w2")
    for host in (head, w1, w2):
        host.put(".config/glimpse/cluster.key", key)
    address = f"tcp://{head.address}:{PORT}"
    cli = [sys.executable, "-m", "glimpse.pools.cli", "--type", "zmq"]
    head.start([*cli, "LaunchBroker", "--host", head.address, "--port", str(PORT)], logs / "broker.log")
    for worker in (w1, w2):
        worker.start([*cli, "LaunchWorker", "--address", address, "--nworkers", "2"], logs / f"{worker.name}.log")
    key_file = tmp_path_factory.mktemp("caller-key") / "cluster.key"
    key_file.write_text(key)
    key_file.chmod(0o600)
    from glimpse.pools.zmq_cluster import MakePool

    pool = MakePool(address, key_file=str(key_file))
    _wait_for_workers(pool, 4)
    yield pool, head, w1, w2
    pool.terminate()
    pool.join()


def _wait_for_workers(pool, count: int) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        hosts_seen = set(pool.map(helpers.host_after, [0.05] * 16, chunksize=1))
        if len(hosts_seen) >= 2:
            return
        time.sleep(0.5)
    raise AssertionError(f"zmq workers of both hosts did not take work within {STARTUP_SECONDS} s")


def test_results_come_from_both_worker_hosts(cluster):
    pool, _, w1, w2 = cluster
    assert set(pool.map(helpers.host_after, [0.05] * 40, chunksize=1)) == {w1.name, w2.name}


def test_a_silent_worker_host_loses_no_result(cluster, hosts):
    pool, _, w1, w2 = cluster
    items = [(i, 0.25) for i in range(160)]
    results = []
    cut = threading.Timer(3.0, hosts.partition, args=(w2,))
    cut.start()
    try:
        started = time.monotonic()
        for result in pool.imap(helpers.index_and_host_after, items, chunksize=1):
            results.append(result)
        elapsed = time.monotonic() - started
    finally:
        cut.cancel()
        hosts.heal(w2)
    assert [index for index, _ in results] == list(range(160))
    assert elapsed < 3.0 + 30.0 + 160 * 0.25 / 2
    # Once back, the host rejoins and gets work again.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if w2.name in set(pool.map(helpers.host_after, [0.05] * 16, chunksize=1)):
            return
    raise AssertionError(f"{w2.name} did not get work again after its link came back")
