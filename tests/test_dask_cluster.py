"""dask_cluster: where MakePool runs, what a pickled pool connects to, and RunMain's verbs."""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import subprocess
import sys
import time

import pytest

pytest.importorskip("distributed")

import signal  # noqa: E402

import dask  # noqa: E402
import psutil  # noqa: E402
from distributed import Client  # noqa: E402

from glimpse.pools import ClusterConnectionError, ClusterLostError, NoWorkersError, WorkerLostError  # noqa: E402
from glimpse.pools.dask_cluster import ADDRESS_VARIABLE, MakePool, RunMain  # noqa: E402
from glimpse.pools.thread_caps import threads_per_worker  # noqa: E402
from tests import helpers  # noqa: E402
from tests.engines._processes import free_port, start_process, stop_process_group, wait_for_port  # noqa: E402
from tests.engines.dask import start_dask_cluster  # noqa: E402

STARTUP_SECONDS = 60.0


@pytest.fixture
def no_configured_address(monkeypatch):
    """No scheduler address in the environment or in Dask's configuration."""
    monkeypatch.delenv(ADDRESS_VARIABLE, raising=False)
    with dask.config.set({"scheduler-address": None}):
        yield


@pytest.fixture
def unreachable_address() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


def _worker_count(address: str) -> int:
    with Client(address, set_as_default=False, timeout=STARTUP_SECONDS) as client:
        return len(client.nthreads())


def _listening_hosts(pids: list[int]) -> set[str]:
    """The addresses that these processes and their children listen on."""
    processes = [psutil.Process(pid) for pid in pids]
    processes += [child for process in processes for child in process.children(recursive=True)]
    return {
        conn.laddr.ip
        for process in processes
        for conn in process.net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    }


# -- where MakePool runs ----------------------------------------------------------------------------


def test_client_passed_in_is_used_and_never_closed(dask_external_cluster, unreachable_address, monkeypatch):
    monkeypatch.setenv(ADDRESS_VARIABLE, unreachable_address)
    with Client(dask_external_cluster.address, set_as_default=False) as client:
        pool = MakePool(address=unreachable_address, client=client)
        assert pool.address == dask_external_cluster.address
        assert pool.map(helpers.times_ten, range(5)) == [0, 10, 20, 30, 40]
        pool.close()
        pool.join()
        assert client.status == "running", "closing the pool closed the client it was given"


def test_address_argument_comes_before_the_environment(dask_external_cluster, unreachable_address, monkeypatch):
    monkeypatch.setenv(ADDRESS_VARIABLE, unreachable_address)
    with MakePool(dask_external_cluster.address) as pool:
        assert pool.address == dask_external_cluster.address
        assert pool.map(helpers.times_ten, [1, 2]) == [10, 20]
    assert _worker_count(dask_external_cluster.address) == 2, "closing a connected pool stopped workers"


def test_environment_variable_names_the_scheduler(dask_external_cluster, no_configured_address, monkeypatch):
    monkeypatch.setenv(ADDRESS_VARIABLE, dask_external_cluster.address)
    with MakePool() as pool:
        assert pool.address == dask_external_cluster.address


def test_dask_configuration_names_the_scheduler(dask_external_cluster, no_configured_address):
    with dask.config.set({"scheduler-address": dask_external_cluster.address}), MakePool() as pool:
        assert pool.address == dask_external_cluster.address


def test_unreachable_address_fails_within_ten_seconds_naming_it(unreachable_address):
    started = time.monotonic()
    with pytest.raises(ClusterConnectionError, match=re.escape(unreachable_address)):
        MakePool(unreachable_address)
    assert time.monotonic() - started < 10


def test_unreachable_address_from_the_environment_says_where_it_came_from(unreachable_address, monkeypatch):
    monkeypatch.setenv(ADDRESS_VARIABLE, unreachable_address)
    with pytest.raises(
        ClusterConnectionError, match=rf"{re.escape(unreachable_address)} \(from \${ADDRESS_VARIABLE}\)"
    ):
        MakePool()


# -- the embedded cluster ---------------------------------------------------------------------------


def test_closing_the_embedded_pool_leaves_no_process(no_configured_address):
    pool = MakePool(n_workers=1)
    client = pool._backend.client
    # LocalCluster's scheduler and nannies live in this process; its workers are processes.
    pids = list(client.run(os.getpid).values())
    assert len(pids) == 1 and os.getpid() not in pids, f"expected one worker process, got pids {pids}"
    listening = _listening_hosts(pids)
    assert listening == {"127.0.0.1"}, f"embedded workers listen on {listening}"
    pool.close()
    pool.join()
    gone, alive = psutil.wait_procs([psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)], timeout=30)
    assert not alive, f"processes left after close(): {[p.pid for p in alive]}"


@pytest.mark.timeout(120)
def test_embedded_cluster_keeps_a_worker_that_keeps_dying(no_configured_address):
    # LocalCluster itself would close the nanny of a worker not back within this timeout.
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "100ms"}), MakePool(n_workers=1) as pool:
        with pytest.raises(WorkerLostError):
            pool.map(helpers.die_always, [1], chunksize=1)
        client = pool._backend.client
        deadline = time.monotonic() + STARTUP_SECONDS
        while not client.nthreads() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.nthreads(), "the embedded cluster gave up on its only worker"
        assert pool.map(helpers.times_ten, [1]) == [10]


# -- pickled pools ----------------------------------------------------------------------------------


def test_pool_pickled_to_another_process_uses_the_same_scheduler(dask_embedded_pool, tmp_path):
    path = tmp_path / "pool.pickle"
    path.write_bytes(pickle.dumps(dask_embedded_pool))
    script = (
        "import pickle, sys\n"
        "pool = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "print(pool.address, pool.map(abs, [-1, -2]))\n"
        "pool.close(); pool.join()\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(maxsplit=1) == [dask_embedded_pool.address, "[1, 2]\n"]
    assert dask_embedded_pool.map(helpers.times_ten, [4]) == [40], "the copy shut the embedded cluster down"


def test_pool_pickled_into_a_task_uses_the_same_scheduler(dask_embedded_pool):
    pool = dask_embedded_pool

    # No close() in the task: the copy lives in the worker's function cache, shared by the
    # call's chunks on that worker, which run side by side once the pool leaves the thread pool.
    def nested(x):
        return pool.address, pool.map(abs, [-x, -2 * x])

    assert pool.map(nested, [1, 5], chunksize=1) == [(pool.address, [1, 2]), (pool.address, [5, 10])]
    assert pool.map(helpers.times_ten, [4]) == [40], "the copy in a task shut the embedded cluster down"


# -- how a call's function reaches the workers ------------------------------------------------------


def _published_functions(pool) -> list[str]:
    return [name for name in pool._backend.client.list_datasets() if name.startswith("glimpse-function-")]


def test_a_small_function_travels_inside_its_chunks(dask_embedded_pool):
    results = dask_embedded_pool.imap(helpers.times_ten, range(300), chunksize=1)
    assert next(results) == 0
    assert _published_functions(dask_embedded_pool) == [], "a small function went through the scheduler"
    assert list(results) == [x * 10 for x in range(1, 300)]


def test_a_large_function_goes_through_the_scheduler_and_leaves_it_after_the_call(dask_embedded_pool):
    table = bytes(range(256)) * 256  # 64 KiB pickled with the function

    def lookup(i):
        return table[i]

    results = dask_embedded_pool.imap(lookup, range(300), chunksize=1)
    assert next(results) == 0
    assert len(_published_functions(dask_embedded_pool)) == 1
    assert list(results) == [table[i] for i in range(1, 300)]
    assert _published_functions(dask_embedded_pool) == []


# -- RunMain ----------------------------------------------------------------------------------------


def test_ping_workers_prints_a_line_per_worker(dask_external_cluster, capsys):
    assert RunMain(["PingWorkers", "--address", dask_external_cluster.address]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines
    for line in lines:
        assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+ threads=1 memory=[\d.]+GiB state=running", line), line


def test_address_comes_from_the_environment(dask_external_cluster, monkeypatch, capsys):
    monkeypatch.setenv(ADDRESS_VARIABLE, dask_external_cluster.address)
    assert RunMain(["PingWorkers"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_missing_address_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.delenv(ADDRESS_VARIABLE, raising=False)
    assert RunMain(["PingWorkers"]) == 1
    err = capsys.readouterr().err
    assert "--address" in err and ADDRESS_VARIABLE in err, err


def test_unreachable_address_is_a_clear_error(unreachable_address, capsys):
    assert RunMain(["KillWorkers", "--address", unreachable_address]) == 1
    assert unreachable_address in capsys.readouterr().err


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1"])
def test_a_scheduler_beyond_loopback_needs_tls_or_insecure(host, capsys):
    assert RunMain(["LaunchBroker", "--host", host]) == 1
    err = capsys.readouterr().err
    assert f"--host {host}" in err and "--tls-ca-file" in err and "openssl" in err and "--insecure" in err, err


def test_workers_listen_on_loopback_for_a_scheduler_on_loopback_and_are_told_otherwise():
    from glimpse.pools.backends.dask.launch import address_reaching

    assert address_reaching("tcp://127.0.0.1:8786") == "127.0.0.1"
    assert address_reaching("tls://localhost:8786") == "127.0.0.1"
    with pytest.raises(ValueError, match="--host"):
        address_reaching("tcp://no-such-host.invalid:8786")


def test_workers_start_again_only_when_they_lost_their_scheduler():
    from glimpse.pools.backends.dask.compat import closed_for_lost_scheduler

    stopping = "2026-12-07 06:47:32,206 - distributed.worker - INFO - Stopping worker at tcp://10.0.0.3:42815. Reason: "
    assert closed_for_lost_scheduler(stopping + "worker-handle-scheduler-connection-broken\n")
    assert closed_for_lost_scheduler(stopping + "worker-heartbeat-missing\n")
    assert not closed_for_lost_scheduler(stopping + "scheduler-close\n")  # retired: KillWorkers
    assert not closed_for_lost_scheduler(stopping + "signal-15\n")


def test_bad_verb_exits_non_zero(capsys):
    with pytest.raises(SystemExit) as exited:
        RunMain(["Nope"])
    assert exited.value.code != 0
    assert "invalid choice: 'Nope'" in capsys.readouterr().err


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exited:
        RunMain(["--help"])
    assert exited.value.code == 0
    assert "LaunchBroker" in capsys.readouterr().out


def test_launched_cluster_restarts_and_kills_its_workers(tmp_path, capsys):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    command = [sys.executable, "-m", "glimpse.pools.dask_cluster"]
    broker = start_process([*command, "LaunchBroker", "--port", str(port)], tmp_path / "broker.log")
    worker = None
    try:
        wait_for_port(port, STARTUP_SECONDS, broker, tmp_path / "broker.log")
        worker = start_process([*command, "LaunchWorker", "--nworkers", "1", "--address", address], tmp_path / "w.log")
        with Client(address, set_as_default=False, timeout=STARTUP_SECONDS) as client:
            client.wait_for_workers(1, timeout=STARTUP_SECONDS)
            # Dask's nanny caps OMP at 1; LaunchWorker adds the caps it leaves unset (one worker: every core).
            caps = client.run(lambda: (os.environ.get("OMP_NUM_THREADS"), os.environ.get("NUMEXPR_NUM_THREADS")))
            cores = str(threads_per_worker(1))
            expected = (os.environ.get("OMP_NUM_THREADS") or "1", os.environ.get("NUMEXPR_NUM_THREADS") or cores)
            assert list(caps.values()) == [expected], f"the worker's (OMP, numexpr) threads: {caps}"
        listening = _listening_hosts([broker.pid, worker.pid])
        assert listening == {"127.0.0.1"}, f"LaunchBroker and LaunchWorker listen on {listening}"
        assert RunMain(["RestartWorkers", "--address", address]) == 0
        assert "restarted 1 of 1 workers" in capsys.readouterr().out
        assert RunMain(["KillWorkers", "--address", address]) == 0
        assert "retired 1 workers" in capsys.readouterr().out
        assert worker.wait(timeout=STARTUP_SECONDS) == 0, "LaunchWorker did not exit after KillWorkers"
        assert RunMain(["PingWorkers", "--address", address]) == 1
        assert "no workers" in capsys.readouterr().err
    finally:
        for process in (worker, broker):
            if process is not None:
                stop_process_group(process)


@contextlib.contextmanager
def _own_cluster(tmp_path, nworkers: int):
    """A scheduler and ``nworkers`` workers for one test, stopped by process group afterwards."""
    cluster = start_dask_cluster(tmp_path, nworkers=nworkers)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_a_scheduler_without_workers_is_a_no_workers_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GLIMPSE_NO_WORKERS_TIMEOUT", "10")
    with _own_cluster(tmp_path, 0) as cluster:
        pool = MakePool(cluster.address)
        started = time.monotonic()
        with pytest.raises(NoWorkersError, match=rf"{cluster.address}.*LaunchWorker --address {cluster.address}"):
            pool.map(abs, [1, 2, 3])
        assert time.monotonic() - started < 40
        pool.close()


def test_a_killed_scheduler_is_a_cluster_lost_error_not_a_crashing_function(tmp_path):
    with _own_cluster(tmp_path, 2) as cluster:
        pool = MakePool(cluster.address)
        results = pool.imap(helpers.sleep_then_return, [(0.2, i) for i in range(200)], chunksize=1)
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        os.killpg(cluster.scheduler.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        with pytest.raises(ClusterLostError, match=rf"scheduler at {cluster.address}.*delivered \d+ results"):
            list(results)
        assert time.monotonic() - killed_at < 60
        pool.terminate()


def test_workers_that_join_mid_call_are_used(tmp_path):
    with _own_cluster(tmp_path, 1) as cluster, MakePool(cluster.address) as pool:
        results = pool.imap_unordered(helpers.sleep_then_pid, [0.5] * 60)  # 30 s on one worker
        pids = {next(results)}
        started = time.monotonic()
        extra = start_process(
            [sys.executable, "-m", "dask", "worker", cluster.address, "--nworkers", "4", "--nthreads", "1"]
            + ["--host", "127.0.0.1", "--no-dashboard", "--dashboard-address", "127.0.0.1:0"],
            tmp_path / "joined.log",
        )
        cluster.workers.append(extra)
        pids.update(results)
        elapsed = time.monotonic() - started
    assert len(pids) >= 4, f"only {len(pids)} worker processes ran chunks after 4 joined"
    assert elapsed < 22, f"{elapsed:.0f} s: the workers that joined barely helped (30 s on one worker)"


def test_cancelling_on_an_external_cluster_restarts_none_of_its_workers(dask_external_cluster):
    with Client(dask_external_cluster.address, set_as_default=False) as client:
        before = client.run(os.getpid)
        with MakePool(dask_external_cluster.address) as pool:
            results = pool.imap(helpers.sleep_then_return, [(0, 0)] + [(3, i) for i in range(1, 6)], chunksize=1)
            assert next(results) == 0
            time.sleep(0.5)
            results.close()
            time.sleep(4)
        assert client.run(os.getpid) == before, "cancelling restarted workers of a cluster the pool does not own"
