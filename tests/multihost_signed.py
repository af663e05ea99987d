"""The multi-host scenarios of glimpse's own signed transports (zmq, gearman), written once: the
head (broker, gearmand) on one host, workers on two others, the caller on a fourth; the key copied
as an admin would (docs/machines/zmq.md, gearman.md); a worker host and the head going silent
mid-call; two worker hosts that share a hostname and a pid.

A test module sets a :class:`Transport`, a module fixture ``cluster`` from :func:`start_cluster`,
and a ``Test...`` class deriving from :class:`SignedTransportAcrossHosts`.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from glimpse.pools.security.keys import KEY_FILE_VARIABLE
from tests import helpers
from tests.multihost import Host, Hosts

log = logging.getLogger(__name__)

STARTUP_SECONDS = 60.0
#: 160 items of 0.25 s on 4 slots: about 10 s of work, cut (or stopped) 3 s in.
ITEMS, SECONDS, CUT_AT = 160, 0.25, 3.0


@dataclass(frozen=True)
class Transport:
    """What differs between the transports: the cluster type, the head's port and name, the form of
    an address, and how a ``PingWorkers`` line names its slot."""

    type: str
    port: int
    head: str
    address_form: str
    slot_of: Callable[[str], str]
    require: Callable[[], object]

    @property
    def cli(self) -> list[str]:
        return [sys.executable, "-m", "glimpse.pools.cli", "--type", self.type]

    def address(self, head: Host) -> str:
        return self.address_form.format(host=head.address, port=self.port)


@dataclass
class Cluster:
    pool: object
    head: Host
    w1: Host
    w2: Host
    key_file: str


def start_cluster(hosts: Hosts, transport: Transport) -> Iterator[Cluster]:
    """``LaunchBroker --host <head's address>`` on host ``head``, ``LaunchWorker`` with two slots on
    ``w1`` and ``w2``; the key in each host's default key file, and the caller's in
    ``$GLIMPSE_CLUSTER_KEY_FILE`` (a pool pickled into a task finds its key on the worker's host)."""
    transport.require()
    logs = hosts.base_dir / f"{transport.type}-logs"
    logs.mkdir()
    key = secrets.token_hex(32)
    head, w1, w2 = hosts.add("head"), hosts.add("w1"), hosts.add("w2")
    for host in (head, w1, w2):
        host.put(".config/glimpse/cluster.key", key)
    address = transport.address(head)
    launch_broker = [*transport.cli, "LaunchBroker", "--host", head.address, "--port", str(transport.port)]
    head.start(launch_broker, logs / "head.log")
    for worker in (w1, w2):
        launch = [*transport.cli, "LaunchWorker", "--address", address, "--nworkers", "2"]
        worker.start(launch, logs / f"{worker.name}.log")
    _wait_until_listening(address, logs / "head.log", transport)
    key_file = hosts.base_dir / "caller-cluster.key"
    key_file.write_text(key)
    key_file.chmod(0o600)
    from glimpse.pools.registry import GetClusterPackage

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_FILE_VARIABLE, str(key_file))
        pool = GetClusterPackage(transport.type).MakePool(address)
        try:
            wait_for_hosts(pool, {w1.name, w2.name})
            yield Cluster(pool, head, w1, w2, str(key_file))
        finally:
            pool.terminate()
            pool.join()


def wait_for_hosts(pool, names: set[str], limit: float = STARTUP_SECONDS, probe=helpers.host_after) -> None:
    """Wait until chunks of a map run on every host in ``names``."""
    deadline = time.monotonic() + limit
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen = set(pool.map(probe, [0.05] * 16, chunksize=1))
        if names <= seen:
            return
        time.sleep(0.5)
    raise AssertionError(f"the workers of {sorted(names - seen)} did not take work within {limit:g} s")


class SignedTransportAcrossHosts:
    """The scenarios; a subclass sets :attr:`transport`. The silent head comes last (it shakes the cluster)."""

    transport: Transport

    def test_results_come_from_both_worker_hosts(self, cluster):
        assert set(cluster.pool.map(helpers.host_after, [0.05] * 40, chunksize=1)) == {cluster.w1.name, cluster.w2.name}

    def test_streaming_mib_items_across_hosts(self, cluster):
        blobs = (os.urandom(1 << 20) for _ in range(64))
        assert list(cluster.pool.imap(helpers.size_of, blobs, chunksize=1)) == [1 << 20] * 64

    def test_leaving_a_call_early_frees_the_workers_on_every_host(self, cluster):
        workers = {cluster.w1.name, cluster.w2.name}
        results = cluster.pool.imap(helpers.host_after, [0.05] + [30.0] * 20, chunksize=1)
        left_at = time.monotonic()
        assert next(results) in workers
        results.close()
        assert set(cluster.pool.map(helpers.host_after, [0.05] * 16, chunksize=1)) == workers
        assert time.monotonic() - left_at < 20, "the 30 s chunks of the call left early still held the workers"

    def test_a_pool_pickled_into_a_task_runs_on_the_cluster(self, cluster):
        [inner_hosts] = cluster.pool.map(helpers.hosts_of_a_map_inside, [(cluster.pool, 24)])
        assert set(inner_hosts) <= {cluster.w1.name, cluster.w2.name} and inner_hosts, inner_hosts

    def test_worker_hosts_that_share_a_hostname_and_a_pid_keep_every_slot(self, cluster, hosts):
        """Two hosts whose workers are each their host's first process, both renamed ``same``: the
        process ids repeat, and every slot must still be listed and get work."""
        cli, address = self.transport.cli, self.transport.address(cluster.head)
        twins = [hosts.add("t1"), hosts.add("t2")]
        key = Path(cluster.key_file).read_text()
        processes = []
        for twin in twins:
            twin.put(".config/glimpse/cluster.key", key)
            launch = " ".join([*cli, "LaunchWorker", "--address", address, "--nworkers", "2"])
            processes.append(
                twin.start(["sh", "-c", f"hostname same && exec {launch}"], hosts.base_dir / f"{twin.name}.log")
            )
        try:
            wait_for_hosts(cluster.pool, {"t1", "t2"}, probe=helpers.host_variable_after)
            listed = subprocess.run(
                [*cli, "PingWorkers", "--address", address, "--key-file", cluster.key_file],
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout.splitlines()
            same = [self.transport.slot_of(line) for line in listed if line.startswith("same:")]
            assert len({slot.split(":")[1] for slot in same}) == 1, f"the test needs equal pids: {same}"
            assert len(set(same)) == 4, f"PingWorkers lists {same}: slots of the two hosts collide"
        finally:
            for twin, process in zip(twins, processes, strict=True):
                twin.stop(process)

    def test_a_silent_worker_host_loses_no_result_and_rejoins(self, cluster, hosts):
        """w2's link goes down mid-call: its running chunks are sent again, every result arrives once
        and in order, and after the link is back its slots get work again."""
        w2 = cluster.w2
        items = [(i, SECONDS) for i in range(ITEMS)]
        try:
            results, arrivals = _timed_results(cluster.pool, items, during=lambda: hosts.partition(w2))
        finally:
            hosts.heal(w2)
        assert [index for index, _ in results] == list(range(ITEMS))
        stall = max(b - a for a, b in zip([0.0, *arrivals[:-1]], arrivals, strict=True))
        log.info("%s, silent worker host: longest wait for a result %.1f s", self.transport.type, stall)
        assert stall < 30 + SECONDS, f"results stopped for {stall:.1f} s after the worker host went silent"
        healed = time.monotonic()
        wait_for_hosts(cluster.pool, {w2.name})
        back_after = time.monotonic() - healed
        log.info("%s: w2 got work again %.1f s after its link came back", self.transport.type, back_after)

    @pytest.mark.full
    def test_a_head_silent_for_20_s_does_not_end_the_call(self, cluster, hosts):
        items = [(i, SECONDS) for i in range(ITEMS)]
        results, arrivals = results_with_blip(cluster.pool, items, hosts, cluster.head, after=8, seconds=20)
        assert [index for index, _ in results] == list(range(ITEMS))
        transport = self.transport
        log.info("%s, 20 s blip of the %s: call finished in %.1f s", transport.type, transport.head, arrivals[-1])
        wait_for_hosts(cluster.pool, {cluster.w1.name, cluster.w2.name})

    def test_a_silent_head_is_a_cluster_lost_error_within_30_s(self, cluster, hosts):
        from glimpse.pools import ClusterLostError

        items = [(i, SECONDS) for i in range(ITEMS)]
        delivered = 0
        try:
            with pytest.raises(ClusterLostError) as lost:
                for _ in cluster.pool.imap(helpers.index_and_host_after, items, chunksize=1):
                    delivered += 1
                    if delivered == 8:
                        hosts.partition(cluster.head)
                        cut_at = time.monotonic()
            waited = time.monotonic() - cut_at
        finally:
            hosts.heal(cluster.head)
        transport = self.transport
        log.info("%s, silent %s: ClusterLostError after %.1f s: %s", transport.type, transport.head, waited, lost.value)
        message = str(lost.value)
        assert cluster.head.address in message and f"delivered {delivered} results" in message, message
        assert 20 <= waited < 30, f"ClusterLostError {waited:.1f} s after the {self.transport.head} went silent"
        wait_for_hosts(cluster.pool, {cluster.w1.name, cluster.w2.name})


def results_with_blip(pool, items, hosts: Hosts, host: Host, after: int, seconds: float):
    """``pool.imap`` over ``items``, ``host`` silent for ``seconds`` once ``after`` results came; the
    results and the time each arrived."""

    def blip():
        hosts.partition(host)
        time.sleep(seconds)
        hosts.heal(host)

    cut = threading.Thread(target=blip)
    results, arrivals = [], []
    started = time.monotonic()
    try:
        for result in pool.imap(helpers.index_and_host_after, items, chunksize=1):
            if len(results) == after:
                cut.start()
            results.append(result)
            arrivals.append(time.monotonic() - started)
    finally:
        if cut.is_alive():
            cut.join()
        hosts.heal(host)
    return results, arrivals


def _wait_until_listening(address: str, log_path: Path, transport: Transport) -> None:
    from glimpse.pools.cluster.reachability import tcp_answers

    deadline = time.monotonic() + STARTUP_SECONDS
    while not tcp_answers(address):
        if time.monotonic() > deadline:
            raise AssertionError(f"the {transport.head} did not listen at {address}: {log_path.read_text()}")
        time.sleep(0.2)


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
