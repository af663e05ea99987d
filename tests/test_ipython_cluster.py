"""ipython_cluster: the default cluster type, where MakePool runs, unreachable clusters, pickling, RunMain."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ipyparallel")

import ipyparallel  # noqa: E402

from glimpse.pools import (  # noqa: E402
    ClusterConnectionError,
    ClusterLostError,
    GetClusterPackage,
    NoWorkersError,
    ipython_cluster,  # noqa: E402
)
from glimpse.pools.backends.ipython import compat  # noqa: E402
from glimpse.pools.ipython_cluster import MakePool, RunMain  # noqa: E402
from glimpse.pools.thread_caps import threads_per_worker  # noqa: E402
from tests import helpers  # noqa: E402
from tests.engines._processes import free_port, start_process, stop_process_group  # noqa: E402
from tests.engines.ipython import isolated_ipython_dir, running_ipcluster  # noqa: E402

UNREACHABLE_SECONDS = 30.0
_PING_LINE = re.compile(r"^engine (\d+)  host \S+  pid (\d+)$")


@pytest.fixture
def isolated(tmp_path):
    """No GLIMPSE_IPYTHON_* variables and an empty IPython directory: MakePool() starts its own cluster."""
    with isolated_ipython_dir(tmp_path / "ipython"):
        yield tmp_path / "ipython"


def _client_file(cluster) -> Path:
    return cluster.profile_dir / "security" / f"ipcontroller-{cluster.cluster_id}-client.json"


def _closed(pool) -> None:
    pool.close()
    pool.join()


# -- the default cluster type ----------------------------------------------------------------------


def test_default_cluster_type_is_ipython(monkeypatch):
    monkeypatch.delenv("GLIMPSE_CLUSTER_TYPE", raising=False)
    assert GetClusterPackage() is ipython_cluster


# -- where MakePool runs ---------------------------------------------------------------------------


def test_a_client_passed_in_is_used_and_left_open(ipython_external_cluster):
    client = ipyparallel.Client(str(_client_file(ipython_external_cluster)))
    try:
        pool = MakePool(client=client)
        assert pool.map(helpers.times_ten, [1, 2]) == [10, 20]
        _closed(pool)
        assert client.ids, "closing the pool closed the client it was given"
        clone = pickle.loads(pickle.dumps(pool))
        assert clone.map(helpers.times_ten, [3]) == [30]
        _closed(clone)
    finally:
        client.close()


def test_connection_arguments_come_before_the_environment(ipython_external_cluster, isolated, monkeypatch):
    monkeypatch.setenv("GLIMPSE_IPYTHON_PROFILE_DIR", str(isolated / "nowhere"))
    pool = MakePool(
        profile_dir=str(ipython_external_cluster.profile_dir), cluster_id=ipython_external_cluster.cluster_id
    )
    assert pool.map(helpers.times_ten, [1]) == [10]
    assert pool.cluster is None
    _closed(pool)


def test_environment_names_the_cluster(ipython_external_cluster, isolated, monkeypatch):
    monkeypatch.setenv("GLIMPSE_IPYTHON_PROFILE_DIR", str(ipython_external_cluster.profile_dir))
    monkeypatch.setenv("GLIMPSE_IPYTHON_CLUSTER_ID", ipython_external_cluster.cluster_id)
    pool = MakePool()
    assert pool.connection.profile_dir == str(ipython_external_cluster.profile_dir)
    assert pool.cluster is None, "MakePool started a cluster although the environment named one"
    assert pool.map(helpers.times_ten, [1]) == [10]
    _closed(pool)


def test_a_running_controller_of_the_default_profile_is_used(ipython_external_cluster, isolated):
    security = isolated / "profile_default" / "security"
    security.mkdir(parents=True)
    shutil.copy(_client_file(ipython_external_cluster), security / "ipcontroller-client.json")
    pool = MakePool()
    assert pool.cluster is None, "MakePool started a cluster although the default profile's controller answers"
    assert pool.map(helpers.times_ten, [1]) == [10]
    _closed(pool)


def test_a_stale_default_profile_falls_back_to_a_local_cluster(isolated):
    security = isolated / "profile_default" / "security"
    security.mkdir(parents=True)
    (security / "ipcontroller-client.json").write_text(json.dumps(_dead_connection_info()))
    pool = MakePool()
    try:
        assert pool.cluster is not None
        assert pool.map(helpers.times_ten, [1]) == [10]
    finally:
        _closed(pool)
    assert not Path(pool.cluster.profile_dir).exists(), "closing the pool left its cluster's profile directory"


# -- unreachable clusters ---------------------------------------------------------------------------


def test_missing_connection_file_names_it_and_what_to_start(tmp_path):
    profile_dir = tmp_path / "empty-profile"
    error = _unreachable(profile_dir=str(profile_dir), cluster_id="abc")
    assert str(profile_dir / "security" / "ipcontroller-abc-client.json") in error
    assert "glimpse-cluster --type ipython LaunchBroker" in error and "ipcluster start" in error


def test_unknown_profile_is_named(isolated):
    error = _unreachable(profile="nope")
    assert "profile 'nope'" in error and "--profile=nope" in error


def test_controller_that_stopped_is_a_clear_error(tmp_path):
    url_file = tmp_path / "ipcontroller-client.json"
    url_file.write_text(json.dumps(_dead_connection_info()))
    error = _unreachable(url_file=str(url_file))
    assert str(url_file) in error and "did not answer" in error


def test_controller_without_engines_is_a_clear_error(tmp_path):
    profile_dir, cluster_id = tmp_path / "profile", "noengines"
    broker = _run_verb(tmp_path, "LaunchBroker", profile_dir, cluster_id)
    try:
        _wait_for_file(profile_dir / "security" / f"ipcontroller-{cluster_id}-client.json", broker)
        error = _unreachable(profile_dir=str(profile_dir), cluster_id=cluster_id)
        assert "no engine registered" in error and "LaunchWorker" in error
        assert RunMain(["PingWorkers", f"--profile-dir={profile_dir}", f"--cluster-id={cluster_id}"]) == 1
    finally:
        stop_process_group(broker)


# -- memory ----------------------------------------------------------------------------------------


def test_the_pools_own_controller_keeps_no_copy_of_the_items_it_passes_on(ipython_embedded_pool):
    """ipyparallel's hub records every task by default, items and results included (up to 1 GiB)."""
    guard = compat.controller_and_engine_processes(ipython_embedded_pool.cluster._cluster)[0]

    def controller_mib() -> float:  # the guard, the controller's hub and its schedulers
        processes = [guard, *guard.children(recursive=True)]
        return sum(process.memory_info().rss for process in processes) / 2**20

    before = controller_mib()
    items = (bytes([i % 256]) * 2**20 for i in range(256))
    assert sum(ipython_embedded_pool.imap(len, items)) == 256 * 2**20
    grown = controller_mib() - before
    assert grown < 128, f"the controller grew by {grown:.0f} MiB while 256 MiB of items went through it"


# -- the pool's own cluster -------------------------------------------------------------------------


def test_the_pools_own_cluster_gets_chunks_past_the_task_scheduler_two_at_most_per_engine(ipython_embedded_pool):
    """On the cluster it started, the pool books the engines itself: nothing waits in ipyparallel's
    task scheduler, and an engine holds one chunk running and one queued, no more."""
    client = ipython_embedded_pool.client
    engines = len(client.ids)
    statuses, values = [], []
    for value in ipython_embedded_pool.imap(
        helpers.sleep_then_return, [(0.2, i) for i in range(6 * engines)], chunksize=1
    ):
        values.append(value)
        statuses.append(client.queue_status())
    assert values == list(range(6 * engines))
    held = [status[engine]["queue"] for status in statuses for engine in client.ids]
    assert all(status["unassigned"] == 0 for status in statuses), statuses
    assert all(status[engine]["tasks"] == 0 for status in statuses for engine in client.ids), statuses
    assert max(held) == 2, statuses  # each engine had its next chunk queued while it ran one


# -- pickling --------------------------------------------------------------------------------------


def test_pool_pickles_to_its_connection_and_the_copy_stops_nothing(ipython_external_pool, ipython_external_cluster):
    clone = pickle.loads(pickle.dumps(ipython_external_pool))
    assert clone.connection == ipython_external_pool.connection
    assert clone.map(helpers.times_ten, [4]) == [40]
    _closed(clone)
    assert ipython_external_pool.map(helpers.times_ten, [5]) == [50]
    assert len(ipython_external_pool.client.ids) == 2, "closing a copy stopped engines"


# -- RunMain ---------------------------------------------------------------------------------------


def test_help_lists_the_verbs(capsys):
    with pytest.raises(SystemExit) as caught:
        RunMain(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for verb in ipython_cluster.VERBS:
        assert verb in out


def test_bad_verb_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as caught:
        RunMain(["Explode"])
    assert caught.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_unreachable_cluster_fails_with_a_message(tmp_path, capsys):
    assert RunMain(["PingWorkers", f"--profile-dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert "no IPython parallel cluster" in err and str(tmp_path) in err


def test_ping_workers_prints_each_engine(ipython_external_cluster, capsys):
    assert RunMain(["PingWorkers", *ipython_external_cluster.options]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(_PING_LINE.match(line) for line in lines), lines


def test_restart_and_kill_workers_on_an_ipcluster(tmp_path, capsys):
    with running_ipcluster(tmp_path) as cluster:
        before = _ping(cluster.options, capsys)
        restarted = _run_verb(tmp_path, "RestartWorkers", cluster.profile_dir, cluster.cluster_id)
        try:
            after = _wait_for_engines(cluster.options, capsys, 2, replacing=before)
            assert not set(before) & set(after), f"restarted engines kept their ids: {before} {after}"
            assert RunMain(["KillWorkers", *cluster.options]) == 0
            assert "stopped 2 engine(s)" in capsys.readouterr().out
            restarted.wait(timeout=60)
        finally:
            stop_process_group(restarted)


def test_launch_broker_and_worker_make_a_working_cluster(tmp_path, capsys):
    with _cluster_of_verbs(tmp_path, "verbs", capsys) as (options, broker, worker):
        pool = MakePool(profile_dir=str(tmp_path / "profile"), cluster_id="verbs")
        assert pool.map(helpers.times_ten, [1, 2]) == [10, 20]
        # LaunchWorker caps the BLAS threads of its engines (one here: every core) unless the user set them.
        blas_threads = pool.map(lambda _: os.environ.get("OPENBLAS_NUM_THREADS"), [0])
        assert blas_threads == [os.environ.get("OPENBLAS_NUM_THREADS") or str(threads_per_worker(1))]
        _closed(pool)
        assert RunMain(["KillWorkers", *options]) == 0
        worker.wait(timeout=60)  # LaunchWorker ends when its engines stop


@pytest.mark.parametrize("killed", ["controller", "engines"])
def test_a_killed_controller_or_every_engine_is_named_within_a_minute(killed, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GLIMPSE_NO_WORKERS_TIMEOUT", "10")
    with _cluster_of_verbs(tmp_path, f"killed-{killed}", capsys) as (_, broker, worker):
        pool = MakePool(profile_dir=str(tmp_path / "profile"), cluster_id=f"killed-{killed}")
        results = pool.imap(helpers.sleep_then_return, [(0.2, i) for i in range(200)], chunksize=1)
        assert next(results) == 0
        victim = broker if killed == "controller" else worker
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        killed_at = time.monotonic()
        if killed == "controller":
            expected = (ClusterLostError, r"IPython controller at 127.0.0.1:\d+ does not answer.*delivered")
        else:
            expected = (NoWorkersError, "no worker was connected to the cluster at 127.0.0.1")
        with pytest.raises(expected[0], match=expected[1]):
            list(results)
        assert time.monotonic() - killed_at < 60


# -- helpers ---------------------------------------------------------------------------------------


def _unreachable(**where) -> str:
    started = time.monotonic()
    with pytest.raises(ClusterConnectionError) as caught:
        MakePool(**where)
    elapsed = time.monotonic() - started
    assert elapsed < UNREACHABLE_SECONDS, f"an unreachable cluster took {elapsed:.0f}s to report"
    return str(caught.value)


def _dead_connection_info() -> dict:
    """A controller's connection info whose ports nothing listens on."""
    ports = {key: free_port() for key in ("control", "task", "mux", "iopub", "notification", "registration")}
    return {
        **ports,
        "broadcast": [free_port()],
        "interface": "tcp://127.0.0.1",
        "location": "127.0.0.1",
        "key": "00000000-0000000000000000",
        "signature_scheme": "hmac-sha256",
        "pack": "json",
        "unpack": "json",
        "task_scheme": "leastload",
        "ssh": "",
    }


@contextlib.contextmanager
def _cluster_of_verbs(root: Path, cluster_id: str, capsys):
    """A controller (LaunchBroker) and one engine (LaunchWorker) in ``root/profile``; yields
    their options and processes, and ends both process groups afterwards."""
    profile_dir = root / "profile"
    options = [f"--profile-dir={profile_dir}", f"--cluster-id={cluster_id}"]
    broker = _run_verb(root, "LaunchBroker", profile_dir, cluster_id)
    worker = None
    try:
        _wait_for_file(profile_dir / "security" / f"ipcontroller-{cluster_id}-engine.json", broker)
        worker = _run_verb(root, "LaunchWorker", profile_dir, cluster_id, "-n", "1")
        _wait_for_engines(options, capsys, 1)
        yield options, broker, worker
    finally:
        if worker is not None:
            stop_process_group(worker)
        stop_process_group(broker)


def _run_verb(root: Path, verb: str, profile_dir: Path, cluster_id: str, *extra: str):
    args = [sys.executable, "-m", "glimpse.pools", "cluster", "--type", "ipython", verb]
    args += [f"--profile-dir={profile_dir}", f"--cluster-id={cluster_id}", *extra]
    return start_process(args, root / f"{verb}.log")


def _wait_for_file(path: Path, process, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the process that should write {path} exited with {process.returncode}"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout:.0f}s"
        time.sleep(0.2)


def _ping(options: list[str], capsys) -> dict[int, int]:
    code = RunMain(["PingWorkers", *options])
    out = capsys.readouterr().out
    matches = [_PING_LINE.match(line) for line in out.splitlines()]
    return {int(m.group(1)): int(m.group(2)) for m in matches if m} if code == 0 else {}


def _wait_for_engines(options: list[str], capsys, count: int, replacing=None, timeout: float = 60.0) -> dict[int, int]:
    """Wait until ``count`` engines answer, none of them with a pid of the engines in ``replacing``."""
    old_pids = set((replacing or {}).values())
    deadline = time.monotonic() + timeout
    while True:
        engines = _ping(options, capsys)
        if len(engines) >= count and not old_pids & set(engines.values()):
            return engines
        assert time.monotonic() < deadline, f"{count} engine(s) did not register within {timeout:.0f}s: {engines}"
        time.sleep(0.5)


# -- across machines -------------------------------------------------------------------------------


def test_launch_broker_listens_on_one_address_only(capsys):
    assert RunMain(["LaunchBroker", "--host", "0.0.0.0"]) == 1
    assert "--host must be one address of this machine" in capsys.readouterr().err


@pytest.mark.parametrize(("silence", "misses"), [("25", 24), ("10", 9), ("0.5", 1)])
def test_the_controllers_heart_monitor_waits_out_the_silence_timeout(silence, misses, monkeypatch):
    from glimpse.pools.backends.ipython import heartbeat

    monkeypatch.setenv("GLIMPSE_SILENCE_TIMEOUT", silence)
    assert heartbeat.controller_options() == [
        f"--HeartMonitor.period={heartbeat.PERIOD_MS}",
        f"--HeartMonitor.max_heartmonitor_misses={misses}",
    ]


def test_an_engine_stops_after_the_silence_timeout_without_the_controllers_pings(monkeypatch):
    from glimpse.pools.backends.ipython import heartbeat

    monkeypatch.setenv("GLIMPSE_SILENCE_TIMEOUT", "25")
    assert heartbeat.engine_options() == ["--IPEngine.max_heartbeat_misses=17"]  # 17 checks of 1.5 s


@pytest.mark.parametrize(
    ("code", "rejoining", "again"),
    [(75, False, True), (69, True, True), (69, False, False), (0, True, False), (1, True, False)],
)
def test_launch_worker_starts_again_only_engines_cut_off_from_the_controller(code, rejoining, again, tmp_path):
    from glimpse.pools.backends.ipython import verbs
    from glimpse.pools.backends.ipython.connection import Connection

    connection = Connection(profile_dir=str(tmp_path))  # no connection file: nothing to probe
    assert (verbs._cut_off(connection, code, rejoining) is not None) == again
