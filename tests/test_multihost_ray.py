"""A Ray cluster across hosts, as docs/machines/ray.md sets it up: the head node on one host, worker
nodes on two others, the caller on a fourth; the head's token copied to every host as an admin would.

A caller is a Python process of its own (a process holds one Ray connection): either a driver on a
node (run inside host ``head`` or ``w1``) or a Ray Client (``ray://``) on the caller's host. Each
scenario's caller prints JSON lines (``_CALLER``); the test reads them from its log.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.engines._processes import start_process, stop_process_group
from tests.multihost import Host, Hosts

pytest.importorskip("ray")

PORT = 6379
CLIENT_PORT = 10001
STARTUP_SECONDS = 120.0
CLI = [sys.executable, "-m", "glimpse.pools.cli", "--type", "ray"]

# One caller program for every scenario: argv is the address and the scenario; it prints one JSON
# object per line, each with the wall-clock time it was printed at ("at").
_CALLER = r"""
import json, pickle, socket, sys, time
import numpy as np
import ray
from glimpse.pools import ClusterLostError
from glimpse.pools.ray_cluster import MakePool


def say(**fields):
    print(json.dumps({"at": time.time(), **fields}), flush=True)


def host_after(seconds):
    time.sleep(seconds)
    return socket.gethostname()


def index_and_host_after(item):
    index, seconds = item
    time.sleep(seconds)
    return index, socket.gethostname()


def array_sum_and_host(array):
    time.sleep(0.05)
    return float(array.sum()), socket.gethostname()


address, scenario = sys.argv[1], sys.argv[2]
started = time.monotonic()
try:
    pool = MakePool(address)
except Exception as error:
    say(event="refused", seconds=time.monotonic() - started, error=f"{type(error).__name__}: {error}")
    sys.exit(0)
say(event="connected", seconds=time.monotonic() - started)
if scenario == "happy":
    hosts = pool.map(host_after, [0.2] * 40, chunksize=1)
    arrays = pool.map(array_sum_and_host, [np.full(100_000, i, dtype=np.float64) for i in range(50)], chunksize=1)
    assert [total for total, _ in arrays] == [i * 100_000.0 for i in range(50)]

    @ray.remote(num_cpus=0)
    def map_inside_a_task(inner_pool):
        return inner_pool.map(abs, [-1, -2, -3])

    say(
        event="happy",
        address=pool.address,
        pickled_address=pickle.loads(pickle.dumps(pool)).address,
        hosts=hosts,
        array_hosts=[host for _, host in arrays],
        in_task=ray.get(map_inside_a_task.remote(pool), timeout=60),
    )
elif scenario == "long":
    count, seconds = int(sys.argv[3]), float(sys.argv[4])
    results = []
    try:
        for result in pool.imap(index_and_host_after, [(i, seconds) for i in range(count)], chunksize=1):
            results.append(result)
            if len(results) == 8:
                say(event="started")
    except ClusterLostError as error:
        say(event="lost", error=str(error), delivered=len(results))
    else:
        say(event="done", indexes=[index for index, _ in results], hosts=sorted(set(h for _, h in results)))
    pool.terminate()
say(event="exit")
"""


@dataclass
class RayCluster:
    head: Host
    w1: Host
    w2: Host
    gcs: str
    client: str
    caller_home: Path
    logs: Path
    nodes: dict = field(default_factory=dict)
    callers: list = field(default_factory=list)

    def start_worker(self, host: Host) -> None:
        """(Re)start ``LaunchWorker`` on ``host``, as an admin does after Ray declared the node dead."""
        if host.name in self.nodes:
            host.stop(self.nodes.pop(host.name))
        command = [*CLI, "LaunchWorker", "--address", self.gcs, "--host", host.address, "--num-cpus", "2"]
        self.nodes[host.name] = host.start(command, self.logs / f"{host.name}.log")


@pytest.fixture(scope="module")
def cluster(hosts: Hosts, tmp_path_factory):
    """``LaunchBroker --host <head's address> --num-cpus 1`` on host ``head`` (it creates the token),
    ``LaunchWorker --address <head>:6379 --host <own address> --num-cpus 2`` on ``w1`` and ``w2``;
    the head's ``~/.ray/auth_token`` copied to the workers' and the caller's ``~/.ray/``."""
    logs = tmp_path_factory.mktemp("ray-multihost-logs")
    head, w1, w2 = hosts.add("head"), hosts.add("w1"), hosts.add("w2")
    gcs = f"{head.address}:{PORT}"
    broker = [*CLI, "LaunchBroker", "--host", head.address, "--port", str(PORT), "--num-cpus", "1"]
    head.start(broker, logs / "head.log")
    _wait_for_log(logs / "head.log", "Ray runtime started")
    token = (head.home / ".ray" / "auth_token").read_bytes()
    caller_home = tmp_path_factory.mktemp("caller-home")
    (caller_home / ".ray").mkdir()
    (caller_home / ".ray" / "auth_token").write_bytes(token)
    cluster = RayCluster(head, w1, w2, gcs, f"ray://{head.address}:{CLIENT_PORT}", caller_home, logs)
    for worker in (w1, w2):
        worker.put(".ray/auth_token", token)
        cluster.start_worker(worker)
    _wait_for_nodes(cluster, 3)
    yield cluster
    for caller in cluster.callers:
        stop_process_group(caller, grace=3.0)


def test_a_driver_on_a_node_gets_results_from_both_worker_hosts(cluster):
    happy = _happy(_run_in(cluster.head, cluster, cluster.gcs, "happy"))
    assert {cluster.w1.name, cluster.w2.name} <= set(happy["hosts"]), happy["hosts"]
    assert happy["address"] == happy["pickled_address"] == cluster.gcs
    assert happy["in_task"] == [1, 2, 3]


def test_ray_client_spreads_chunks_over_every_node_and_pickles_to_its_address(cluster):
    happy = _happy(_run_on_caller(cluster, cluster.client, "happy"))
    assert {cluster.w1.name, cluster.w2.name} <= set(happy["hosts"]), happy["hosts"]
    arrays = Counter(happy["array_hosts"])
    # Ray's default put ~all of these on the head node, which holds the arrays the client sent.
    for worker in (cluster.w1, cluster.w2):
        assert arrays[worker.name] >= 10, f"array chunks per host: {dict(arrays)}"
    assert happy["address"] == happy["pickled_address"] == cluster.client
    assert happy["in_task"] == [1, 2, 3]


def test_a_driver_off_the_cluster_given_the_gcs_address_fails_fast_naming_ray_client(cluster):
    refused = _events(_run_on_caller(cluster, cluster.gcs, "happy"))[0]
    assert refused["event"] == "refused", refused
    assert refused["seconds"] < 20, refused
    assert cluster.client in refused["error"] and cluster.gcs in refused["error"], refused["error"]


def test_a_silent_worker_host_loses_no_result_with_a_driver_on_a_node(cluster, hosts):
    count, seconds = 160, 0.25
    log = cluster.logs / "silent-worker.log"
    cluster.head.start([sys.executable, "-c", _CALLER, cluster.gcs, "long", str(count), str(seconds)], log)
    _wait_for_event(log, "started", STARTUP_SECONDS)
    hosts.partition(cluster.w2)
    cut = time.time()
    try:
        end = _wait_for_event(log, "done", 180)
    finally:
        hosts.heal(cluster.w2)
    assert end["indexes"] == list(range(count)), end
    # The head node's CPU and w1's two take over the rest.
    assert end["at"] - cut < 30 + count * seconds / 3, f"{end['at'] - cut:.0f} s after the cut"
    _print_measure("silent worker host, driver on the head: all results", end["at"] - cut)
    # Ray ended the node it declared dead; LaunchWorker joins again by itself, and the node gets work.
    _wait_for_nodes(cluster, 3)
    happy = _happy(_run_in(cluster.head, cluster, cluster.gcs, "happy"))
    assert cluster.w2.name in happy["hosts"], happy["hosts"]


@pytest.mark.parametrize("caller", ["ray-client", pytest.param("driver-on-w1", marks=pytest.mark.full)])
def test_a_silent_head_is_a_cluster_lost_error_within_30_seconds(cluster, hosts, caller):
    log = cluster.logs / f"silent-head-{caller}.log"
    _start_long_call(cluster, caller, log, count=4000, seconds=0.25)
    hosts.partition(cluster.head)
    cut = time.time()
    try:
        lost = _wait_for_event(log, "lost", 120)
    finally:
        hosts.heal(cluster.head)
    _print_measure(f"silent head, {caller}: ClusterLostError", lost["at"] - cut)
    assert lost["at"] - cut < 30, f"ClusterLostError {lost['at'] - cut:.0f} s after the cut: {lost}"
    assert cluster.head.address in lost["error"], lost["error"]
    _restart_nodes_declared_dead(cluster)


@pytest.mark.full
def test_a_head_silent_for_20_seconds_does_not_end_a_drivers_call(cluster, hosts):
    count, seconds = 240, 0.25
    log = cluster.logs / "blip-driver-on-w1.log"
    _start_long_call(cluster, "driver-on-w1", log, count=count, seconds=seconds)
    _cut_for(hosts, cluster.head, 20)
    end = _wait_for_event(log, "done", 120)
    assert end["indexes"] == list(range(count)), end


@pytest.mark.full
def test_a_head_silent_for_20_seconds_ends_a_ray_client_call_with_cluster_lost_not_a_hang(cluster, hosts):
    # Ray Client's wait never returns after such a silence although the head answers again.
    log = cluster.logs / "blip-ray-client.log"
    _start_long_call(cluster, "ray-client", log, count=4000, seconds=0.25)
    cut = time.time()
    _cut_for(hosts, cluster.head, 20)
    lost = _wait_for_event(log, "lost", 120)
    _print_measure("head silent 20 s, ray-client: ClusterLostError", lost["at"] - cut)
    assert "Ray Client" in lost["error"] and cluster.head.address in lost["error"], lost["error"]
    assert lost["at"] - cut < 20 + 30 + 10, lost


def _cut_for(hosts: Hosts, host: Host, seconds: float) -> None:
    hosts.partition(host)
    try:
        time.sleep(seconds)
    finally:
        hosts.heal(host)


def _start_long_call(cluster: RayCluster, caller: str, log: Path, count: int, seconds: float) -> None:
    args = ["long", str(count), str(seconds)]
    if caller == "ray-client":
        command = [sys.executable, "-c", _CALLER, cluster.client, *args]
        cluster.callers.append(start_process(command, log, env=_caller_env(cluster)))
    else:
        cluster.w1.start([sys.executable, "-c", _CALLER, cluster.gcs, *args], log)
    _wait_for_event(log, "started", STARTUP_SECONDS)


def _restart_nodes_declared_dead(cluster: RayCluster) -> None:
    """A head cut off for longer than its health checks allow declares every other node dead, and
    Ray ends those nodes when they hear of it: their LaunchWorker joins again by itself."""
    _wait_for_nodes(cluster, 3)


# -- helpers ----------------------------------------------------------------------------------------


def _run_in(host: Host, cluster: RayCluster, address: str, *args: str, timeout: float = 240) -> str:
    """Run ``_CALLER`` inside ``host`` to its end; its output."""
    done = host.run([sys.executable, "-c", _CALLER, address, *args], timeout=timeout)
    return f"{done.stdout}\n(exit {done.returncode})\n{done.stderr[-3000:]}"


def _run_on_caller(cluster: RayCluster, address: str, *args: str, timeout: float = 240) -> str:
    """Run ``_CALLER`` on the caller's host (this machine, its own HOME with the token); its output."""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", _CALLER, address, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_caller_env(cluster),
        start_new_session=True,
    )
    return f"{done.stdout}\n(exit {done.returncode})\n{done.stderr[-3000:]}"


def _caller_env(cluster: RayCluster) -> dict:
    env = {name: value for name, value in os.environ.items() if not name.startswith("RAY_")}
    return {**env, "HOME": str(cluster.caller_home), "RAY_USAGE_STATS_ENABLED": "0"}


def _events(output: str) -> list[dict]:
    events = []
    for line in output.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    assert events, f"the caller printed nothing:\n{output}"
    return events


def _happy(output: str) -> dict:
    found = [event for event in _events(output) if event["event"] == "happy"]
    assert found, f"the caller did not finish the happy path:\n{output}"
    return found[0]


def _print_measure(what: str, seconds: float) -> None:
    print(f"\n[measured] {what}: {seconds:.1f} s")


def _wait_for_event(log: Path, name: str, timeout: float) -> dict:
    """The first event ``name`` (or ``exit``) the caller printed to ``log``, waiting up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if event["event"] in (name, "exit", "refused", "lost"):
                    assert event["event"] == name, f"expected {name}, got {event}"
                    return event
        time.sleep(0.2)
    raise AssertionError(f"no {name} within {timeout} s:\n{log.read_text(errors='replace')[-4000:]}")


def _wait_for_log(log: Path, text: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} did not appear in {log}:\n{log.read_text(errors='replace')[-3000:]}")


def _wait_for_nodes(cluster: RayCluster, count: int) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    lines: list[str] = []
    while time.monotonic() < deadline:
        done = cluster.head.run([*CLI, "PingWorkers", "--address", cluster.gcs], timeout=60)
        lines = [line for line in done.stdout.splitlines() if " alive" in line]
        if len(lines) >= count:
            return
        time.sleep(1)
    logs = "\n".join(f"{p.name}:\n{p.read_text(errors='replace')[-2000:]}" for p in cluster.logs.iterdir())
    raise AssertionError(f"{len(lines)} of {count} Ray nodes alive after {STARTUP_SECONDS} s\n{logs}")
