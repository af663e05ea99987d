"""A glimpse gearman cluster across hosts, as docs/machines/gearman.md sets it up: gearmand on one
host, workers on two others, the caller on a fourth; the key copied as an admin would; a worker
host and gearmand going silent mid-call; two worker hosts that share a hostname and a pid."""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from glimpse.pools.security.keys import KEY_FILE_VARIABLE
from tests import helpers
from tests.engines.gearman import gearmand_or_skip
from tests.multihost import Host, Hosts

log = logging.getLogger(__name__)

PORT = 4730
STARTUP_SECONDS = 60.0
CLI = [sys.executable, "-m", "glimpse.pools.cli", "--type", "gearman"]
#: 160 items of 0.25 s on 4 slots: about 10 s of work, cut (or stopped) 3 s in.
ITEMS, SECONDS, CUT_AT = 160, 0.25, 3.0

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster(hosts: Hosts):
    """``LaunchBroker --host <head's address>`` (gearmand) on host ``head``, ``LaunchWorker`` with two
    slots on ``w1`` and ``w2``; the key in each host's default key file, and the caller's in
    ``$GLIMPSE_CLUSTER_KEY_FILE`` (a pool pickled into a task finds its key on the worker's host)."""
    gearmand_or_skip()
    logs = hosts.base_dir / "gearman-logs"
    logs.mkdir()
    key = secrets.token_hex(32)
    head, w1, w2 = hosts.add("head"), hosts.add("w1"), hosts.add("w2")
    address = f"{head.address}:{PORT}"
    head.start([*CLI, "LaunchBroker", "--host", head.address, "--port", str(PORT)], logs / "gearmand.log")
    key_file = _key_everywhere(key, [w1, w2], hosts.base_dir)
    for worker in (w1, w2):
        worker.start([*CLI, "LaunchWorker", "--address", address, "--nworkers", "2"], logs / f"{worker.name}.log")
    _wait_until_listening(address, logs / "gearmand.log")
    from glimpse.pools.gearman_cluster import MakePool

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_FILE_VARIABLE, key_file)
        pool = MakePool(address)
        try:
            _wait_for_hosts(pool, {w1.name, w2.name})
            yield pool, head, w1, w2, key_file
        finally:
            pool.terminate()
            pool.join()


def _wait_until_listening(address: str, log_path: Path) -> None:
    from glimpse.pools.cluster.reachability import tcp_answers

    deadline = time.monotonic() + STARTUP_SECONDS
    while not tcp_answers(address):
        if time.monotonic() > deadline:
            raise AssertionError(f"gearmand did not listen at {address}: {log_path.read_text()}")
        time.sleep(0.2)


def _key_everywhere(key: str, workers: list[Host], caller_dir: Path) -> str:
    """The key in each worker host's ``~/.config/glimpse/cluster.key``, as an admin copies it, and
    in a file of the caller's; the caller's file's path."""
    for host in workers:
        host.put(".config/glimpse/cluster.key", key)
    caller = caller_dir / "caller-cluster.key"
    caller.write_text(key)
    caller.chmod(0o600)
    return str(caller)


def _wait_for_hosts(pool, names: set[str], limit: float = STARTUP_SECONDS, probe=helpers.host_after) -> None:
    deadline = time.monotonic() + limit
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen = set(pool.map(probe, [0.05] * 16, chunksize=1))
        if names <= seen:
            return
        time.sleep(0.5)
    raise AssertionError(f"gearman workers of {sorted(names - seen)} did not take work within {limit:g} s")


def _timed_results(pool, items, during=None):
    """Each result of ``pool.imap`` over ``items`` with the time it arrived; ``during`` runs on a timer."""
    results, arrivals = [], []
    timer = threading.Timer(CUT_AT, during) if during else None
    started = time.monotonic()
    if timer:
        timer.start()
    try:
        for result in pool.imap(helpers.index_and_host_after, items, chunksize=1):
            results.append(result)
            arrivals.append(time.monotonic() - started)
    finally:
        if timer:
            timer.cancel()
    return results, arrivals


# -- the happy path ---------------------------------------------------------------------------------


def test_results_come_from_both_worker_hosts(cluster):
    pool, _, w1, w2, _ = cluster
    assert set(pool.map(helpers.host_after, [0.05] * 40, chunksize=1)) == {w1.name, w2.name}


def test_streaming_mib_items_across_hosts(cluster):
    pool = cluster[0]
    sizes = list(pool.imap(helpers.size_of, (os.urandom(1 << 20) for _ in range(64)), chunksize=1))
    assert sizes == [1 << 20] * 64


def test_leaving_a_call_early_frees_the_workers_on_every_host(cluster):
    pool, _, w1, w2, _ = cluster
    results = pool.imap(helpers.host_after, [0.05] + [30.0] * 20, chunksize=1)
    left_at = time.monotonic()
    assert next(results) in {w1.name, w2.name}
    results.close()
    assert set(pool.map(helpers.host_after, [0.05] * 16, chunksize=1)) == {w1.name, w2.name}
    assert time.monotonic() - left_at < 20, "the 30 s chunks of the call left early still held the workers"


def test_a_pool_pickled_into_a_task_runs_on_the_cluster(cluster):
    pool, _, w1, w2, _ = cluster
    [inner_hosts] = pool.map(helpers.hosts_of_a_map_inside, [(pool, 24)])
    assert set(inner_hosts) <= {w1.name, w2.name} and inner_hosts, inner_hosts


def test_worker_hosts_that_share_a_hostname_and_a_pid_keep_every_slot(cluster, hosts):
    """Two hosts whose workers are each their host's first process, both renamed ``same``: the
    process ids repeat, and every slot must still be listed and get work."""
    pool, head, *_, key_file = cluster
    address = f"{head.address}:{PORT}"
    twins = [hosts.add("t1"), hosts.add("t2")]
    key = Path(key_file).read_text()
    processes = []
    for twin in twins:
        twin.put(".config/glimpse/cluster.key", key)
        launch = " ".join([*CLI, "LaunchWorker", "--address", address, "--nworkers", "2"])
        processes.append(
            twin.start(["sh", "-c", f"hostname same && exec {launch}"], hosts.base_dir / f"{twin.name}.log")
        )
    try:
        _wait_for_hosts(pool, {"t1", "t2"}, probe=helpers.host_variable_after)
        listed = subprocess.run(
            [*CLI, "PingWorkers", "--address", address, "--key-file", key_file],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.splitlines()
        same = [line for line in listed if line.startswith("same:")]
        assert len({line.split(":")[1] for line in same}) == 1, f"the test needs equal pids: {same}"
        assert len(set(same)) == 4, f"PingWorkers lists {same}: slots of the two hosts collide"
    finally:
        for twin, process in zip(twins, processes, strict=True):
            twin.stop(process)


# -- a silent worker host -------------------------------------------------------------------------


def test_a_silent_worker_host_loses_no_result_and_rejoins(cluster, hosts):
    """w2's link goes down mid-call: its running chunks are sent again once their heartbeats stop,
    every result arrives once and in order, and after the link is back its slots get work again."""
    pool, _, w1, w2, _ = cluster
    items = [(i, SECONDS) for i in range(ITEMS)]
    try:
        results, arrivals = _timed_results(pool, items, during=lambda: hosts.partition(w2))
    finally:
        hosts.heal(w2)
    assert [index for index, _ in results] == list(range(ITEMS))
    stall = max(b - a for a, b in zip([0.0, *arrivals[:-1]], arrivals, strict=True))
    log.info("gearman, silent worker host: call %.1f s, longest wait for a result %.1f s", arrivals[-1], stall)
    assert stall < 30 + SECONDS, f"results stopped for {stall:.1f} s after the worker host went silent"
    healed = time.monotonic()
    _wait_for_hosts(pool, {w2.name})
    log.info("gearman: w2 got work again %.1f s after its link came back", time.monotonic() - healed)


@pytest.mark.full
def test_a_worker_host_back_mid_call_has_its_late_results_dropped_and_takes_work_again(cluster, hosts):
    """w2 is silent for 15 s in a call of about 40 s: the chunks it ran are sent again after 10 s
    without heartbeats, their first results arrive once the link is back and are dropped (every
    index once), and w2's slots take work again in the same call."""
    pool, _, w1, w2, _ = cluster
    items = [(i, SECONDS) for i in range(3 * ITEMS)]

    def blip():
        hosts.partition(w2)
        time.sleep(15)
        hosts.heal(w2)

    cut = threading.Thread(target=blip)
    results, arrivals = [], []
    started = time.monotonic()
    try:
        for result in pool.imap(helpers.index_and_host_after, items, chunksize=1):
            if len(results) == 12:
                cut.start()
                healed_at = time.monotonic() - started + 15
            results.append(result)
            arrivals.append(time.monotonic() - started)
    finally:
        if cut.is_alive():
            cut.join()
        hosts.heal(w2)
    assert [index for index, _ in results] == list(range(3 * ITEMS))
    back = [at for at, (_, host) in zip(arrivals, results, strict=True) if host == w2.name and at > healed_at + 1]
    log.info(
        "gearman, w2 silent 15 s mid-call: call %.1f s; w2 ran chunks again %.1f s after the heal",
        arrivals[-1],
        back[0] - healed_at if back else float("nan"),
    )
    assert back, "w2 took no work in the rest of the call after its link came back"


# -- a silent gearmand (last: the cluster is shaken afterwards) ------------------------------------


@pytest.mark.full
def test_gearmand_silent_for_20_s_does_not_end_the_call(cluster, hosts):
    pool, head, w1, w2, _ = cluster
    items = [(i, SECONDS) for i in range(ITEMS)]

    def blip():
        hosts.partition(head)
        time.sleep(20)
        hosts.heal(head)

    cut = threading.Thread(target=blip)
    results, arrivals = [], []
    started = time.monotonic()
    try:
        for result in pool.imap(helpers.index_and_host_after, items, chunksize=1):
            if len(results) == 8:
                cut.start()
            results.append(result)
            arrivals.append(time.monotonic() - started)
    finally:
        if cut.is_alive():
            cut.join()
        hosts.heal(head)
    assert [index for index, _ in results] == list(range(ITEMS))
    log.info("gearman, 20 s blip of gearmand: call finished in %.1f s", arrivals[-1])
    _wait_for_hosts(pool, {w1.name, w2.name})


def test_a_silent_gearmand_is_a_cluster_lost_error_within_30_s(cluster, hosts):
    from glimpse.pools import ClusterLostError

    pool, head, w1, w2, _ = cluster
    items = [(i, SECONDS) for i in range(ITEMS)]
    delivered = 0
    cut_at = None
    try:
        with pytest.raises(ClusterLostError) as lost:
            for _ in pool.imap(helpers.index_and_host_after, items, chunksize=1):
                delivered += 1
                if delivered == 8:
                    hosts.partition(head)
                    cut_at = time.monotonic()
        waited = time.monotonic() - cut_at
    finally:
        hosts.heal(head)
    log.info("gearman, silent gearmand: ClusterLostError %.1f s after the cut: %s", waited, lost.value)
    assert head.address in str(lost.value) and f"delivered {delivered} results" in str(lost.value), lost.value
    assert 20 <= waited < 30, f"ClusterLostError {waited:.1f} s after gearmand went silent"
    _wait_for_hosts(pool, {w1.name, w2.name})
