"""The zmq cluster type: where a pool connects, its errors, pickling, lost peers, RunMain's verbs and cleanup."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time

import pytest

from tests import helpers
from tests.engines._processes import free_port, group_members, start_process
from tests.engines.zmq import start_zmq_cluster

pytest.importorskip("zmq")
psutil = pytest.importorskip("psutil")

from glimpse.pools import ClusterConnectionError, ClusterLostError, NoWorkersError, WorkerLostError, cli  # noqa: E402
from glimpse.pools.backends.zmq.backend import ZmqBackend  # noqa: E402
from glimpse.pools.security import resolve_key  # noqa: E402
from glimpse.pools.zmq_cluster import ADDRESS_VARIABLE, MakePool, RunMain  # noqa: E402

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def small_cluster(tmp_path):
    """A broker with one worker slot, for tests that kill or stop parts of it."""
    cluster = start_zmq_cluster(tmp_path / "cluster", nworkers=1)
    yield cluster
    cluster.stop()


@pytest.fixture
def no_address(monkeypatch):
    monkeypatch.delenv(ADDRESS_VARIABLE, raising=False)


# -- where a pool connects -------------------------------------------------------------------------


def test_address_argument_wins_over_the_environment(zmq_external_cluster, monkeypatch):
    monkeypatch.setenv(ADDRESS_VARIABLE, "tcp://127.0.0.1:1")
    with MakePool(zmq_external_cluster.address) as pool:
        assert pool.address == zmq_external_cluster.address
        assert pool.cluster is None
        assert pool.map(helpers.times_ten, [1, 2]) == [10, 20]


def test_environment_address_is_used_without_an_argument(zmq_external_cluster, monkeypatch):
    monkeypatch.setenv(ADDRESS_VARIABLE, zmq_external_cluster.address.removeprefix("tcp://"))
    with MakePool() as pool:
        assert pool.address == zmq_external_cluster.address, "a bare HOST:PORT should mean tcp://HOST:PORT"
        assert pool.cluster is None


def test_bad_address_is_a_clear_error():
    with pytest.raises(ValueError, match=r"bad zmq broker address 'http://x'.*tcp://HOST:PORT"):
        MakePool("http://x")


def test_workers_argument_needs_an_embedded_cluster(zmq_external_cluster):
    with pytest.raises(TypeError, match="embedded"):
        MakePool(zmq_external_cluster.address, workers=3)


def test_unreachable_broker_fails_within_ten_seconds_naming_the_address():
    address = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ClusterConnectionError, match=f"{address}.*LaunchBroker"):
        MakePool(address)
    assert time.monotonic() - started < 10


def test_unreachable_broker_from_the_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv(ADDRESS_VARIABLE, f"tcp://127.0.0.1:{free_port()}")
    with pytest.raises(ClusterConnectionError, match=rf"\${ADDRESS_VARIABLE}"):
        MakePool()


# -- pickling and the function ---------------------------------------------------------------------


def test_unpickled_copy_connects_to_the_same_broker_and_never_owns_it(zmq_embedded_pool):
    clone = pickle.loads(pickle.dumps(zmq_embedded_pool))
    assert clone.address == zmq_embedded_pool.address
    assert clone.cluster is None
    clone.close()
    clone.join()
    assert all(psutil.pid_exists(pid) for pid in zmq_embedded_pool.cluster.pids()), "the copy stopped the cluster"
    assert zmq_embedded_pool.map(helpers.times_ten, [4]) == [40]


def test_pool_unpickled_inside_a_task_runs_work(zmq_external_cluster):
    with MakePool(zmq_external_cluster.address) as pool:
        assert pool.map(_map_with_pool, [pool]) == [[10, 20]]


def _map_with_pool(pool):
    with pool:
        return pool.map(helpers.times_ten, [1, 2])


def test_broker_keeps_the_function_for_the_call_and_drops_it_on_release(zmq_external_cluster, tmp_path):
    release = str(tmp_path / "release")
    with MakePool(zmq_external_cluster.address) as pool:
        results = pool.imap(helpers.held_until_released, [0, ("hold", release)], chunksize=1)
        assert next(results) == 0
        assert _broker_view(zmq_external_cluster.address)["functions"] == 1
        open(release, "w").close()
        assert list(results) == ["released"]
        assert _broker_view(zmq_external_cluster.address)["functions"] == 0


# -- lost workers and a lost broker ----------------------------------------------------------------


def test_worker_process_killed_mid_chunk_is_detected_and_its_chunk_rerun(small_cluster, tmp_path):
    release = str(tmp_path / "release")
    with MakePool(small_cluster.address) as pool:
        results = pool.imap(helpers.held_until_released, [0, ("hold", release)], chunksize=1)
        assert next(results) == 0
        first = small_cluster.workers[0]
        killed_at = _when_busy(small_cluster.address, lambda: os.killpg(first.pid, signal.SIGKILL))
        first.wait(timeout=10)
        open(release, "w").close()
        small_cluster.add_workers(1)
        assert list(results) == ["released"]
    assert time.monotonic() - killed_at < 30, "the lost chunk took too long to be re-sent"


def test_a_task_process_that_closes_its_pipes_and_lives_on_is_killed_and_named(zmq_embedded_pool):
    # The embedded broker runs its slots itself, so it waits only briefly for such a process, then kills it.
    with pytest.raises(WorkerLostError, match="closed its pipes but did not exit") as lost:
        zmq_embedded_pool.map(helpers.close_pipes_and_live_on, [1])
    assert not psutil.pid_exists(helpers.pid_named_in(str(lost.value))), "the task process was left running"
    assert zmq_embedded_pool.map(helpers.times_ten, range(4), chunksize=1) == [0, 10, 20, 30]


def test_a_chunk_waiting_behind_a_long_one_is_taken_back_for_an_idle_worker(zmq_external_cluster):
    # Each worker holds a second chunk while it runs one, to start it without a round trip; the
    # short chunk held behind the 3 s one must move to the other worker once that one runs dry.
    items = enumerate([3.0] + [0.05] * 20)
    with MakePool(zmq_external_cluster.address) as pool:
        ran_on = dict(pool.imap_unordered(helpers.sleep_then_index_and_pid, items, chunksize=1))
    assert ran_on[0] not in [ran_on[index] for index in range(1, 21)], "a short chunk waited behind the long one"


def test_a_call_still_runs_where_its_first_chunk_was_taken_back(zmq_external_cluster, tmp_path):
    # A worker's first chunk of a call brings the call's function; when that chunk is taken back
    # before it starts, the call's later chunks on that worker must still find the function.
    release = str(tmp_path / "release")
    with MakePool(zmq_external_cluster.address) as pool:
        held = pool.imap(helpers.held_until_released, [0, ("hold", release)], chunksize=1)
        assert next(held) == 0
        naps = pool.imap_unordered(helpers.sleep_then_pid, [0.05] * 40, chunksize=1)
        ran_on = [next(naps) for _ in range(4)]
        time.sleep(1)  # the other worker runs dry, so the chunk waiting behind the held one is taken back
        open(release, "w").close()
        ran_on += naps
        assert list(held) == ["released"]
    assert len(set(ran_on)) == 2, "the worker that gave a chunk back ran none of the call afterwards"


def test_broker_death_mid_call_is_a_clear_error(small_cluster, tmp_path):
    pool = MakePool(small_cluster.address)
    results = pool.imap(helpers.held_until_released, [0, ("hold", str(tmp_path / "never"))], chunksize=1)
    assert next(results) == 0
    killed_at = _when_busy(small_cluster.address, lambda: os.killpg(small_cluster.broker.pid, signal.SIGKILL))
    lost = rf"nothing listens at {small_cluster.address} any more.*delivered 1 results"
    with pytest.raises(ClusterLostError, match=lost):
        next(results)
    assert time.monotonic() - killed_at < 15, "a broker whose port refuses connections was waited for"
    pool.close()


def test_a_hung_broker_is_a_cluster_lost_error_after_the_silence_timeout(small_cluster, tmp_path, monkeypatch):
    # Its port still accepts connections (the kernel answers for a stopped process): only the silence tells.
    monkeypatch.setenv("GLIMPSE_SILENCE_TIMEOUT", "4")
    pool = MakePool(small_cluster.address)
    results = pool.imap(helpers.held_until_released, [0, ("hold", str(tmp_path / "never"))], chunksize=1)
    assert next(results) == 0
    stopped_at = _when_busy(small_cluster.address, lambda: os.killpg(small_cluster.broker.pid, signal.SIGSTOP))
    try:
        with pytest.raises(ClusterLostError, match=rf"{small_cluster.address} stopped answering.*delivered 1 results"):
            next(results)
        waited = time.monotonic() - stopped_at
    finally:
        os.killpg(small_cluster.broker.pid, signal.SIGCONT)
    assert 4 <= waited < 15, f"ClusterLostError {waited:.1f} s after the broker stopped ($GLIMPSE_SILENCE_TIMEOUT=4)"
    pool.close()


def test_embedded_broker_death_mid_call_is_a_clear_error_at_once(no_address, tmp_path):
    # The pool talks to the broker it started through a socket pair: its end closing is news at once.
    pool = MakePool(workers=1)
    try:
        results = pool.imap(helpers.held_until_released, [0, ("hold", str(tmp_path / "never"))], chunksize=1)
        assert next(results) == 0
        killed_at = time.monotonic()
        os.killpg(pool.cluster.broker.pid, signal.SIGKILL)
        with pytest.raises(ClusterLostError, match=rf"broker at {pool.address} exited.*delivered 1 results"):
            next(results)
        assert time.monotonic() - killed_at < 5, "a dead embedded broker was found only after a timeout"
    finally:
        pool.close()
        pool.join()


def test_pool_idle_longer_than_the_broker_timeout_still_works(zmq_external_cluster, monkeypatch, tmp_path):
    monkeypatch.setenv("GLIMPSE_SILENCE_TIMEOUT", "1")
    with MakePool(zmq_external_cluster.address) as pool:
        assert pool.map(helpers.times_ten, [1]) == [10]
        time.sleep(1.5)
        results = pool.imap(helpers.times_ten, range(4), chunksize=1)
        assert next(results) == 0
        time.sleep(1.5)
        assert list(results) == [10, 20, 30], "a slow consumer was mistaken for a dead broker"


def test_broker_restarted_mid_call_gets_the_chunks_again(small_cluster, tmp_path):
    release = str(tmp_path / "release")
    with MakePool(small_cluster.address) as pool:
        results = pool.imap(helpers.held_until_released, [0, ("hold", release)], chunksize=1)
        assert next(results) == 0
        old = small_cluster.broker
        _when_busy(small_cluster.address, lambda: os.killpg(old.pid, signal.SIGKILL))
        old.wait(timeout=10)
        port = small_cluster.address.rsplit(":", 1)[1]
        small_cluster.broker = start_process(
            [sys.executable, "-m", "glimpse.pools.cli", "--type", "zmq", "LaunchBroker", "--port", port],
            small_cluster.log_dir / "broker-2.log",
        )
        open(release, "w").close()
        assert list(results) == ["released"]


# -- RunMain ---------------------------------------------------------------------------------------


def test_ping_workers_prints_one_line_per_worker(zmq_external_cluster, capsys):
    assert RunMain(["PingWorkers", "--address", zmq_external_cluster.address]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines
    for line in lines:
        worker_id, *fields = line.split()
        values = dict(field.split("=", 1) for field in fields)
        assert values["host"] and values["pid"].isdigit() and values["state"] in ("idle", "busy"), line
        assert worker_id.endswith((":0", ":1")), line


def test_restart_workers_gives_every_worker_a_fresh_task_process(zmq_external_pool, zmq_external_cluster, capsys):
    before = set(zmq_external_pool.map(helpers.worker_pid, range(40), chunksize=1))
    assert RunMain(["RestartWorkers", "--address", zmq_external_cluster.address]) == 0
    assert "restarted the task processes of 2 workers" in capsys.readouterr().out
    after = set(zmq_external_pool.map(helpers.worker_pid, range(40), chunksize=1))
    assert not before & after, f"task processes {before & after} survived the restart"


def test_kill_workers_makes_the_worker_processes_exit(small_cluster, capsys):
    assert RunMain(["KillWorkers", "--address", small_cluster.address]) == 0
    assert "told 1 workers to exit" in capsys.readouterr().out
    assert small_cluster.workers[0].wait(timeout=20) == 0
    assert RunMain(["PingWorkers", "--address", small_cluster.address]) == 1
    assert "no workers are connected" in capsys.readouterr().err


def test_a_broker_runs_worker_slots_of_its_own_beside_those_that_connect(tmp_path, capsys):
    cluster = start_zmq_cluster(tmp_path / "cluster", nworkers=0, broker_slots=1)
    try:
        with MakePool(cluster.address) as pool:
            assert pool.cluster is None
            assert [worker["pid"] for worker in _broker_view(cluster.address)["workers"]] == [cluster.broker.pid]
            assert pool.map(helpers.times_ten, range(5)) == [0, 10, 20, 30, 40]
            cluster.add_workers(1)
            ran_on = set(pool.map(helpers.sleep_then_pid, [0.1] * 20, chunksize=1))
            broker_tasks = {child.pid for child in psutil.Process(cluster.broker.pid).children()}
            assert len(ran_on) == 2 and len(ran_on & broker_tasks) == 1, "both kinds of worker should run chunks"
        assert RunMain(["KillWorkers", "--address", cluster.address]) == 0
        assert "told 2 workers to exit" in capsys.readouterr().out
        assert cluster.workers[0].wait(timeout=20) == 0
        deadline = time.monotonic() + 20
        while len(group_members([cluster.broker.pid])) > 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        left = group_members([cluster.broker.pid])
        assert len(left) == 1, f"the task processes of the broker's slots outlived them: {left}"
        assert cluster.broker.poll() is None, "the broker stopped with its workers"
        assert RunMain(["PingWorkers", "--address", cluster.address]) == 1
    finally:
        cluster.stop()


def test_verbs_without_an_address_fail_clearly(no_address, capsys):
    assert RunMain(["PingWorkers"]) == 1
    assert ADDRESS_VARIABLE in capsys.readouterr().err


def test_verb_against_an_unreachable_broker_names_the_address(capsys):
    address = f"tcp://127.0.0.1:{free_port()}"
    assert RunMain(["KillWorkers", "--address", address]) == 1
    assert address in capsys.readouterr().err


def test_unknown_verb_is_a_usage_error():
    with pytest.raises(SystemExit) as caught:
        RunMain(["LaunchEverything"])
    assert caught.value.code == 2


def test_cluster_help_lists_the_zmq_verbs():
    line = next(line for line in cli.help_text().splitlines() if line.strip().startswith("zmq "))
    for verb in ("LaunchBroker", "LaunchWorker", "PingWorkers", "KillWorkers", "RestartWorkers"):
        assert verb in line, line


# -- processes and sockets -------------------------------------------------------------------------


def test_external_broker_listens_on_loopback_only(zmq_external_cluster):
    assert _listening_addresses(zmq_external_cluster.broker.pid) == {"127.0.0.1"}


def test_embedded_cluster_listens_on_loopback_only_and_leaves_nothing_on_close(no_address):
    pool = MakePool(workers=1)
    groups = pool.cluster.pids()
    assert _listening_addresses(pool.cluster.broker.pid) == {"127.0.0.1"}
    assert pool.map(helpers.times_ten, [1]) == [10]
    assert len(group_members(groups)) >= 2, "expected a broker and the task process of its worker slot"
    pool.close()
    pool.join()
    assert not group_members(groups), f"left behind: {group_members(groups)}"


def test_embedded_cluster_exits_when_its_owner_dies():
    code = (
        "import os, sys\n"
        "os.environ.pop('GLIMPSE_ZMQ_ADDRESS', None)\n"
        "from glimpse.pools.zmq_cluster import MakePool\n"
        "pool = MakePool(workers=1)\n"
        "print(*pool.cluster.pids(), flush=True)\n"
        "os._exit(0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    groups = [int(pid) for pid in done.stdout.split()]
    assert len(groups) == 1, done.stderr  # the broker runs the worker slots: their task processes are in its group
    deadline = time.monotonic() + 20
    while group_members(groups) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = group_members(groups)
    for pgid in groups:
        _kill_group(pgid)
    assert not left, f"the embedded cluster outlived its owner: {left}"


# -- helpers -----------------------------------------------------------------------------------------


def _broker_view(address: str) -> dict:
    backend = ZmqBackend(address, resolve_key())
    try:
        return backend.describe_cluster()
    finally:
        backend.close()


def _when_busy(address: str, action) -> float:
    """Wait until a worker of the broker at ``address`` runs a chunk, then run ``action``; return when."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(worker["state"] == "busy" for worker in _broker_view(address)["workers"]):
            action()
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError("no worker became busy within 30 s")


def _listening_addresses(pid: int) -> set[str]:
    connections = psutil.Process(pid).net_connections(kind="inet")
    return {c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN}


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_a_broker_without_workers_is_a_no_workers_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GLIMPSE_NO_WORKERS_TIMEOUT", "10")
    cluster = start_zmq_cluster(tmp_path / "cluster", nworkers=0)
    try:
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
