"""The gearman cluster type on a real gearmand: addresses, pickling, verbs, faults, and who may send work."""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import time

import cloudpickle
import pytest

from tests import helpers
from tests.engines._processes import free_port, group_members, start_process, stop_process_group
from tests.engines.gearman import gearmand_or_skip, start_gearman_cluster

psutil = pytest.importorskip("psutil")

from glimpse.pools import ClusterConnectionError, ClusterLostError, NoWorkersError, cli  # noqa: E402
from glimpse.pools.backends.gearman import jobs  # noqa: E402
from glimpse.pools.backends.gearman import protocol as g  # noqa: E402
from glimpse.pools.gearman_cluster import ADDRESS_VARIABLE, MakePool, RunMain  # noqa: E402
from glimpse.pools.security import MessageSigner, generate_key, resolve_key  # noqa: E402

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def small_cluster(tmp_path):
    """gearmand with one worker slot, for tests that kill or stop parts of it."""
    cluster = start_gearman_cluster(tmp_path / "cluster", nworkers=1)
    yield cluster
    cluster.stop()


@pytest.fixture
def no_address(monkeypatch):
    monkeypatch.delenv(ADDRESS_VARIABLE, raising=False)


# -- where a pool connects -------------------------------------------------------------------------


def test_address_argument_wins_over_the_environment(gearman_external_cluster, monkeypatch):
    monkeypatch.setenv(ADDRESS_VARIABLE, f"127.0.0.1:{free_port()}")
    with MakePool(gearman_external_cluster.address) as pool:
        assert pool.address == gearman_external_cluster.address and pool.cluster is None
        assert pool.map(helpers.times_ten, [1, 2]) == [10, 20]


def test_environment_address_is_used_without_an_argument(gearman_external_cluster, monkeypatch):
    monkeypatch.setenv(ADDRESS_VARIABLE, f" {gearman_external_cluster.address} ")
    with MakePool() as pool:
        assert pool.address == gearman_external_cluster.address and pool.cluster is None


def test_bad_and_unreachable_addresses_are_clear_errors(gearman_external_cluster):
    with pytest.raises(ValueError, match="HOST:PORT"):
        MakePool("127.0.0.1:port")
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(ClusterConnectionError, match=address):
        MakePool(address)
    with pytest.raises(TypeError, match="embedded"):
        MakePool(gearman_external_cluster.address, workers=3)


def test_several_servers_share_the_work(tmp_path):
    first = start_gearman_cluster(tmp_path / "first", nworkers=0)
    second = start_gearman_cluster(tmp_path / "second", nworkers=0)
    try:
        both = f"{first.address},{second.address}"
        first.address = both
        first.add_workers(2)
        with MakePool(both) as pool:
            assert pool.map(helpers.times_ten, range(50), chunksize=1) == [10 * i for i in range(50)]
    finally:
        first.stop()
        second.stop()


def test_a_pool_pickles_to_its_address_and_never_owns_the_cluster(gearman_embedded_pool):
    clone = pickle.loads(pickle.dumps(gearman_embedded_pool))
    assert clone.address == gearman_embedded_pool.address and clone.cluster is None
    assert clone.map(helpers.times_ten, [3]) == [30]
    clone.close()
    assert all(psutil.pid_exists(pid) for pid in gearman_embedded_pool.cluster.pids()), "the copy stopped the cluster"
    assert gearman_embedded_pool.map(helpers.times_ten, [4]) == [40]


def test_an_insecure_embedded_cluster_runs_work_unsigned():
    gearmand_or_skip()
    with MakePool(workers=1, insecure=True) as pool:
        assert pool.map(helpers.times_ten, [1, 2]) == [10, 20]


def test_pool_unpickled_inside_a_task_runs_work(gearman_external_cluster):
    with MakePool(gearman_external_cluster.address) as pool:
        assert pool.map(_map_with_pool, [pool]) == [[10, 20]]


def _map_with_pool(pool):
    with pool:
        return pool.map(helpers.times_ten, [1, 2])


def test_without_gearmand_the_error_names_the_package_and_the_apt_command(no_address):
    code = "from glimpse.pools.gearman_cluster import MakePool\nMakePool()"
    env = {**os.environ, "GLIMPSE_GEARMAND": "/nonexistent/gearmand"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "gearman-job-server" in last and "apt-get install" in last, last


# -- faults ----------------------------------------------------------------------------------------


def test_worker_process_killed_mid_chunk_loses_only_that_chunk(small_cluster, tmp_path):
    """A raw gearmand re-queues the job of a dead worker: the pool counts it lost and re-sends it once."""
    release = str(tmp_path / "release")
    with MakePool(small_cluster.address) as pool:
        results = pool.imap(helpers.held_until_released, [0, ("hold", release), 2], chunksize=1)
        assert next(results) == 0
        _wait_until(lambda: _running(small_cluster.address, pool) == 1, "the held chunk never started")
        first = small_cluster.workers[0]
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        killed_at = time.monotonic()
        open(release, "w").close()
        small_cluster.add_workers(1)
        assert list(results) == ["released", 2]
    assert time.monotonic() - killed_at < 30


def test_gearmand_killed_mid_call_is_a_cluster_lost_error(small_cluster, tmp_path):
    pool = MakePool(small_cluster.address)
    results = pool.imap(helpers.held_until_released, [0, ("hold", str(tmp_path / "never"))], chunksize=1)
    assert next(results) == 0
    os.killpg(small_cluster.server.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    with pytest.raises(ClusterLostError, match=rf"{small_cluster.address}.*delivered 1 results"):
        next(results)
    assert time.monotonic() - killed_at < 60
    pool.terminate()


def test_workers_reconnect_to_a_restarted_gearmand(small_cluster):
    old = small_cluster.server
    os.killpg(old.pid, signal.SIGKILL)
    old.wait(timeout=10)
    port = small_cluster.address.rsplit(":", 1)[1]
    small_cluster.server = start_process(
        [gearmand_or_skip(), "--listen=127.0.0.1", f"--port={port}", "--log-file=stderr", "--threads=2"]
        + [f"--pid-file={small_cluster.log_dir / 'gearmand-2.pid'}"],
        small_cluster.log_dir / "gearmand-2.log",
    )
    server, function = g.parse_servers(small_cluster.address)[0], jobs.chunk_function(resolve_key()).decode()
    _wait_until(lambda: _answers(server) and g.status(server).get(function, (0, 0, 0))[2] == 1, "no worker came back")
    with MakePool(small_cluster.address) as pool:
        assert pool.map(helpers.times_ten, range(3)) == [0, 10, 20]
    log = (small_cluster.log_dir / "workers-0.log").read_text()
    assert log.count("cannot reach the gearman server") <= 2, "a missing server flooded the worker's log"


def test_no_workers_is_a_no_workers_error_naming_the_address_and_a_worker_of_another_key(tmp_path, monkeypatch):
    monkeypatch.setenv("GLIMPSE_NO_WORKERS_TIMEOUT", "10")
    cluster = start_gearman_cluster(tmp_path / "cluster", nworkers=0)
    other_key = tmp_path / "other.key"
    other_key.write_text(generate_key().secret.hex())
    other_key.chmod(0o600)
    try:
        cluster.workers.append(
            start_process(
                [sys.executable, "-m", "glimpse.pools.cli", "--type", "gearman", "LaunchWorker"]
                + ["--address", cluster.address, "--nworkers", "1", "--key-file", str(other_key)],
                tmp_path / "other-worker.log",
            )
        )
        _wait_until(lambda: "serving" in (tmp_path / "other-worker.log").read_text(), "the other worker never started")
        with MakePool(cluster.address) as pool:
            started = time.monotonic()
            with pytest.raises(NoWorkersError, match=rf"{cluster.address}.*LaunchWorker --address {cluster.address}"):
                pool.map(helpers.times_ten, [1, 2, 3])
            assert time.monotonic() - started < 40
    finally:
        cluster.stop()


def test_workers_that_join_mid_call_are_used(small_cluster):
    items = [0.5] * 60  # 30 s on the one worker the cluster starts with
    with MakePool(small_cluster.address) as pool:
        results = pool.imap_unordered(helpers.sleep_then_pid, items)
        pids = {next(results)}
        started = time.monotonic()
        small_cluster.add_workers(4)
        pids.update(results)
        elapsed = time.monotonic() - started
    assert len(pids) >= 4, f"only {len(pids)} worker processes ran chunks after 4 joined"
    assert elapsed < 22, f"{elapsed:.0f} s: the workers that joined barely helped (30 s on one worker)"


def test_cancelling_frees_the_workers_and_keeps_their_processes(gearman_external_cluster, gearman_external_pool):
    pids = [process.pid for process in gearman_external_cluster.workers]
    results = gearman_external_pool.imap(helpers.sleep_then_return, [(0, 0)] + [(600, i) for i in range(1, 6)], 1)
    assert next(results) == 0
    time.sleep(1.0)
    results.close()
    started = time.monotonic()
    assert gearman_external_pool.map(helpers.times_ten, range(4), chunksize=1) == [0, 10, 20, 30]
    assert time.monotonic() - started < 20, "the cancelled chunks still held the workers"
    assert all(process.poll() is None for process in gearman_external_cluster.workers)
    assert [process.pid for process in gearman_external_cluster.workers] == pids


# -- who may send work -----------------------------------------------------------------------------


def test_jobs_without_the_key_or_tampered_with_are_never_unpickled(gearman_external_cluster, tmp_path):
    marker = tmp_path / "ran"
    function = cloudpickle.dumps(lambda items: [open(marker, "w").close()])
    frames = [b"call", function, cloudpickle.dumps([1]), b"0"]
    stranger = MessageSigner(generate_key(), jobs.POOL, ordered=False)
    insider = MessageSigner(resolve_key(), jobs.POOL, ordered=False)
    rng = random.Random(5)
    hostile = [jobs.seal(stranger, jobs.WORKER, frames), pickle.dumps(["not", "signed"]), b""]
    hostile += [rng.randbytes(rng.randrange(2000)) for _ in range(100)]
    for _ in range(200):
        sealed = bytearray(jobs.seal(insider, jobs.WORKER, frames))
        sealed[rng.randrange(len(sealed))] ^= 1 << rng.randrange(8)
        hostile.append(bytes(sealed))
    connection = g.Connection(g.parse_servers(gearman_external_cluster.address)[0])
    try:
        for data in hostile:
            connection.send(g.SUBMIT_JOB, jobs.chunk_function(resolve_key()), os.urandom(8).hex().encode(), data)
        outcomes = _outcomes(connection, len(hostile))
    finally:
        connection.close()
    assert outcomes == {g.WORK_FAIL: len(hostile)}, outcomes
    assert not marker.exists(), "a job without a valid signature ran"
    assert all(process.poll() is None for process in gearman_external_cluster.workers)


# -- verbs -----------------------------------------------------------------------------------------


def test_ping_restart_and_kill_workers(small_cluster, capsys):
    small_cluster.add_workers(1)

    def both_listed() -> bool:
        assert RunMain(["PingWorkers", "--address", small_cluster.address]) == 0
        out = capsys.readouterr().out
        return out.count(":0\n") == 2 and "workers=2" in out

    _wait_until(both_listed, "PingWorkers never listed both worker slots")
    with MakePool(small_cluster.address) as pool:
        before = set(pool.map(helpers.worker_pid, range(30), chunksize=1))
        assert RunMain(["RestartWorkers", "--address", small_cluster.address]) == 0
        assert "restarted the task processes of 2 worker slots" in capsys.readouterr().out
        _wait_until(lambda: not before & set(pool.map(helpers.worker_pid, range(30), chunksize=1)), "no restart")
    assert RunMain(["KillWorkers", "--address", small_cluster.address]) == 0
    assert "told 2 worker slots to exit" in capsys.readouterr().out
    for process in small_cluster.workers:
        assert process.wait(timeout=20) == 0
    assert RunMain(["PingWorkers", "--address", small_cluster.address]) == 1


def test_launch_broker_runs_gearmand_on_loopback_only_and_ends_it(tmp_path):
    gearmand_or_skip()
    port = free_port()
    broker = start_process(
        [sys.executable, "-m", "glimpse.pools.cli", "--type", "gearman", "LaunchBroker", "--port", str(port)],
        tmp_path / "broker.log",
    )
    try:
        _wait_until(lambda: "listening on" in (tmp_path / "broker.log").read_text(), "gearmand never listened")
        servers = [child for child in psutil.Process(broker.pid).children() if child.name() == "gearmand"]
        assert len(servers) == 1
        listening = {c.laddr.ip for c in servers[0].net_connections("inet") if c.status == psutil.CONN_LISTEN}
        assert listening == {"127.0.0.1"}
        assert g.admin(("127.0.0.1", port), "getpid")[0].endswith(str(servers[0].pid))
    finally:
        stop_process_group(broker)
    assert not psutil.pid_exists(servers[0].pid) or servers[0].status() == psutil.STATUS_ZOMBIE


def test_embedded_cluster_listens_on_loopback_only_and_leaves_nothing_on_close(no_address):
    pool = MakePool(workers=1)
    groups = pool.cluster.pids()
    assert pool.map(helpers.times_ten, [1]) == [10]
    gearmand = [p for p in psutil.Process(pool.cluster.broker.pid).children() if p.name() == "gearmand"][0]
    assert {c.laddr.ip for c in gearmand.net_connections("inet") if c.status == psutil.CONN_LISTEN} == {"127.0.0.1"}
    pool.close()
    pool.join()
    assert not group_members(groups), f"left behind: {group_members(groups)}"


def test_cluster_help_lists_the_gearman_verbs():
    line = next(line for line in cli.help_text().splitlines() if line.strip().startswith("gearman "))
    for verb in ("LaunchBroker", "LaunchWorker", "PingWorkers", "KillWorkers", "RestartWorkers"):
        assert verb in line, line


# -- helpers -----------------------------------------------------------------------------------------


def _wait_until(condition, what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(what)


def _running(address: str, pool) -> int:
    function = jobs.chunk_function(pool.key).decode()
    return g.status(g.parse_servers(address)[0]).get(function, (0, 0, 0))[1]


def _answers(server) -> bool:
    try:
        g.admin(server, "version", timeout=1.0)
        return True
    except OSError:
        return False


def _outcomes(connection: g.Connection, count: int) -> dict[int, int]:
    """How many jobs of ``count`` submitted on ``connection`` ended in each way (WORK_COMPLETE, WORK_FAIL)."""
    ended: dict[int, int] = {}
    deadline = time.monotonic() + 60
    while sum(ended.values()) < count and time.monotonic() < deadline:
        for packet in connection.receive():
            if packet.kind in (g.WORK_COMPLETE, g.WORK_FAIL, g.WORK_EXCEPTION):
                ended[packet.kind] = ended.get(packet.kind, 0) + 1
    return ended
