"""Ray-specific behaviour: where MakePool runs, address errors, pickling to a task, RunMain's verbs.

Tests that make a pool of their own run it in a fresh Python process: a process holds one Ray
connection, and this one's belongs to the contract suite's pools.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from tests import helpers
from tests.engines._processes import free_port, start_process, stop_process_group, wait_for_port

pytest.importorskip("ray")

from glimpse.pools import ray_cluster  # noqa: E402

RAY_PROCESS_NAMES = ("raylet", "gcs_server")


def run_python(
    code: str, args: list[str] = (), env: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run ``code`` with ``args`` in a fresh Python, ``env`` over this process's environment (None deletes)."""
    environment = dict(os.environ)
    for name, value in (env or {}).items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (
        f"exit code {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
    )
    return result.stdout


# Prints the pool's address, the CPUs it sees, and the Ray servers this process started (if any).
POOL_REPORT = """
    import psutil, ray
    from glimpse.pools.ray_cluster import MakePool
    pool = MakePool({args})
    assert pool.map(lambda x: x * 10, range(5)) == [0, 10, 20, 30, 40]
    started = sorted({{p.name() for p in psutil.Process().children(recursive=True)}} & {{"raylet", "gcs_server"}})
    print(pool.address, int(ray.cluster_resources()["CPU"]), ",".join(started) or "-")
    pool.close()
    print("initialized after close:", ray.is_initialized())
"""


# -- where MakePool runs ------------------------------------------------------------------------------


def test_ray_address_variable_names_the_cluster_and_no_local_ray_starts(ray_head):
    out = assert_ok(run_python(POOL_REPORT.format(args=""), env={"RAY_ADDRESS": ray_head, "RAY_AUTH_MODE": None}))
    assert out.splitlines()[0] == f"{ray_head} 2 -", f"expected the 2-CPU cluster and no local Ray servers: {out}"


def test_address_argument_wins_over_ray_address(ray_head):
    elsewhere = f"127.0.0.1:{free_port()}"
    code = POOL_REPORT.format(args=repr(ray_head))
    out = assert_ok(run_python(code, env={"RAY_ADDRESS": elsewhere, "RAY_AUTH_MODE": None}))
    assert out.splitlines()[0] == f"{ray_head} 2 -", out


def test_an_initialized_ray_is_used_and_left_running(ray_head):
    code = f"""
        import ray
        from glimpse.pools.ray_cluster import MakePool
        ray.init(address="{ray_head}")
        pool = MakePool()
        assert pool.map(lambda x: x + 1, [1, 2]) == [2, 3]
        pool.close()
        print(pool.address, ray.is_initialized())
    """
    # Ray's own settings for a client of a head on 127.0.0.1 with token authentication.
    env = {"RAY_ADDRESS": None, "RAY_AUTH_MODE": "token", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    out = assert_ok(run_python(code, env=env))
    assert out.strip() == f"{ray_head} True", f"the pool did not leave the Ray it found connected: {out}"


def test_without_an_address_the_pool_embeds_ray_on_loopback_and_shuts_it_down(ray_temp_dir):
    code = """
        import json, sys, psutil, ray
        from glimpse.pools.ray_cluster import MakePool
        pool = MakePool(_temp_dir=sys.argv[1])
        servers = psutil.Process().children(recursive=True)
        names = {p.name() for p in servers}
        assert {"raylet", "gcs_server"} <= names, names
        listening = set()
        for process in [psutil.Process(), *servers]:
            listening |= {c.laddr.ip for c in process.net_connections("inet") if c.status == psutil.CONN_LISTEN}
        print(pool.address, int(ray.cluster_resources()["CPU"]), json.dumps(sorted(listening)))
        pool.close()
        print("initialized after close:", ray.is_initialized())
    """
    out = assert_ok(run_python(code, [ray_temp_dir], env={"RAY_ADDRESS": None})).splitlines()
    address, cpus, listening = out[0].split(" ", 2)
    assert address.startswith("127.0.0.1:") and int(cpus) == psutil.cpu_count()
    ips = json.loads(listening)
    assert ips and all(ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback for ip in ips), ips
    assert out[1] == "initialized after close: False", "close() did not shut the embedded Ray down"


def test_an_address_that_does_not_answer_fails_within_30_seconds_naming_it():
    address = f"127.0.0.1:{free_port()}"
    code = """
        import json, sys, psutil, time
        from glimpse.pools.errors import ClusterConnectionError
        from glimpse.pools.ray_cluster import MakePool
        started = time.monotonic()
        try:
            MakePool(sys.argv[1])
        except ClusterConnectionError as error:
            print(round(time.monotonic() - started), error)
        print(json.dumps(sorted(p.name() for p in psutil.Process().children(recursive=True))))
    """
    out = assert_ok(run_python(code, [address], env={"RAY_ADDRESS": None})).splitlines()
    seconds, message = out[0].split(" ", 1)
    assert int(seconds) < 30 and address in message, out
    assert not set(json.loads(out[1])) & set(RAY_PROCESS_NAMES), f"a local Ray was started: {out[1]}"


def test_a_port_that_is_not_ray_fails_within_30_seconds_naming_it():
    with _listening_socket() as port:
        started = time.monotonic()
        result = run_python(
            "import sys\nfrom glimpse.pools.ray_cluster import MakePool\nMakePool(sys.argv[1])",
            [f"127.0.0.1:{port}"],
            env={"RAY_ADDRESS": None},
        )
    assert result.returncode != 0 and f"127.0.0.1:{port}" in result.stderr.splitlines()[-1], result.stderr[-2000:]
    assert time.monotonic() - started < 40


def test_a_second_cluster_in_one_process_is_a_clear_error(ray_external_pool):
    with pytest.raises(ConnectionError, match="already connected .* one cluster per process"):
        ray_cluster.MakePool(f"127.0.0.1:{free_port()}")


# -- pickling ----------------------------------------------------------------------------------------


def test_pool_pickled_into_a_ray_task_runs_there_and_leaves_the_cluster_up(ray_external_pool):
    import ray

    pool = ray_external_pool

    @ray.remote(num_cpus=0)
    def map_inside_a_task(inner_pool):
        results = inner_pool.map(helpers.times_ten, range(6))
        inner_pool.close()
        return results

    assert ray.get(map_inside_a_task.remote(pool), timeout=120) == [x * 10 for x in range(6)]
    assert ray.is_initialized()
    assert pool.map(helpers.times_ten, [4]) == [40], "closing the copy in the task broke the cluster"


# -- RunMain ---------------------------------------------------------------------------------------


def run_main(*argv: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    code = f"import sys\nfrom glimpse.pools.ray_cluster import RunMain\nsys.exit(RunMain({list(argv)!r}))"
    return run_python(code, env=env, timeout=timeout)


def test_ping_workers_prints_one_line_per_node(ray_head):
    out = assert_ok(run_main("PingWorkers", env={"RAY_ADDRESS": ray_head, "RAY_AUTH_MODE": None}))
    assert out.splitlines() == [f"{out.split()[0]} cpus=2 alive head"], out
    assert out.startswith("127.0.0.1:")


def test_ping_workers_names_an_address_that_does_not_answer():
    address = f"127.0.0.1:{free_port()}"
    result = run_main("PingWorkers", "--address", address, env={"RAY_ADDRESS": None})
    assert result.returncode == 1 and address in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("verb", ["KillWorkers", "RestartWorkers"])
def test_verbs_ray_cannot_honour_say_so_and_fail(verb, capsys):
    assert ray_cluster.RunMain([verb]) == 1
    assert "Ray has no API" in capsys.readouterr().err


def test_launch_worker_joins_the_cluster(ray_head, ray_temp_dir):
    log_path = os.path.join(ray_temp_dir, "worker.log")
    command = [sys.executable, "-m", "glimpse.pools.ray_cluster", "LaunchWorker", "--address", ray_head]
    command += ["--num-cpus", "1", "--temp-dir", ray_temp_dir]
    worker = start_process(command, log_path, env={"RAY_USAGE_STATS_ENABLED": "0"})
    try:
        deadline = time.monotonic() + 90
        lines: list[str] = []
        while time.monotonic() < deadline and worker.poll() is None:
            lines = assert_ok(run_main("PingWorkers", "--address", ray_head)).splitlines()
            if len(lines) == 2:
                break
            time.sleep(1)
        assert sorted(line.split(" ", 1)[1] for line in lines) == ["cpus=1 alive", "cpus=2 alive head"], (
            f"{lines}\n{open(log_path).read()[-3000:]}"
        )
        _assert_loopback_only(worker.pid)
    finally:
        stop_process_group(worker, grace=5)


def test_launch_broker_runs_a_head_node_on_loopback(ray_auth_token, ray_temp_dir):
    port = free_port()
    temp_dir = tempfile.mkdtemp(dir=ray_temp_dir, prefix="b")
    log_path = os.path.join(temp_dir, "broker.log")
    command = [sys.executable, "-m", "glimpse.pools.ray_cluster", "LaunchBroker", "--port", str(port)]
    command += ["--num-cpus", "1", "--temp-dir", temp_dir]
    broker = start_process(command, log_path, env={"RAY_USAGE_STATS_ENABLED": "0"})
    try:
        wait_for_port(port, 60, broker, log_path)
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not lines:
            result = run_main("PingWorkers", "--address", f"127.0.0.1:{port}")
            lines = result.stdout.splitlines() if result.returncode == 0 else []
        assert len(lines) == 1 and lines[0].endswith("cpus=1 alive head"), f"{lines}\n{open(log_path).read()[-3000:]}"
        _assert_loopback_only(broker.pid)
    finally:
        stop_process_group(broker, grace=5)


def _assert_loopback_only(pgid: int) -> None:
    listening = set()
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid:
                conns = process.net_connections("inet")
                listening |= {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN}
        except (psutil.Error, ProcessLookupError):
            continue
    assert listening, "found no listening sockets"
    public = [ip for ip in listening if not ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback]
    assert not public, f"Ray listens beyond loopback on {public}"


class _listening_socket:
    """A TCP port on 127.0.0.1 that accepts connections and never answers."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        return self.sock.getsockname()[1]

    def __exit__(self, *exc_info) -> None:
        self.sock.close()


_RUN_ON_HEAD = """
import os, signal, sys, time
from glimpse.pools import ClusterLostError, NoWorkersError
from glimpse.pools.ray_cluster import MakePool

address, head_group, scenario = sys.argv[1], int(sys.argv[2]), sys.argv[3]
pool = MakePool(address)
if scenario == "grow":
    started = time.monotonic()
    results = pool.imap_unordered(lambda seconds: (time.sleep(seconds), os.getpid())[1], [0.5] * 60)
    pids = {next(results)}
    print("first", flush=True)
    input()  # the test starts a second node, then says go
    pids.update(results)
    print(f"grew: {len(pids)} processes in {time.monotonic() - started:.0f} s", flush=True)
    sys.exit(0)
if scenario == "no-workers":
    try:
        pool.map(abs, [1, 2, 3])
    except NoWorkersError as error:
        print("no workers:", error, flush=True)
    sys.exit(0)
results = pool.imap(lambda x: (time.sleep(0.2), x)[1], range(500), chunksize=1)
print("first", next(results), flush=True)
os.killpg(head_group, signal.SIGKILL)
killed = time.monotonic()
try:
    list(results)
except ClusterLostError as error:
    print(f"lost after {time.monotonic() - killed:.0f} s:", error, flush=True)
time.sleep(25)  # past Ray's own limit (set to 20 s below) for a driver that lost its head node
print("alive", flush=True)
"""


def test_a_node_that_joins_mid_call_is_used(ray_auth_token):
    from tests.engines.ray import _wait_for_log, start_ray_head

    temp_dir = tempfile.mkdtemp(prefix="glimpse-ray-")
    head, address = start_ray_head(temp_dir, num_cpus=1)
    node = None
    try:
        driver = subprocess.Popen(
            [sys.executable, "-c", _RUN_ON_HEAD, address, str(head.pid), "grow"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "RAY_ADDRESS": ""},
        )
        assert driver.stdout.readline().strip() == "first"
        node_log = Path(temp_dir) / "node.log"
        node = start_process(
            [sys.executable, "-m", "glimpse.pools", "cluster", "--type", "ray", "LaunchWorker"]
            + ["--address", address, "--num-cpus", "4", "--temp-dir", temp_dir],
            node_log,
            env={"RAY_USAGE_STATS_ENABLED": "0"},
        )
        _wait_for_log(node_log, "Ray runtime started", 60, node)
        output, _ = driver.communicate("go\n", timeout=120)
    finally:
        if node is not None:
            stop_process_group(node, grace=5)
        stop_process_group(head, grace=5)
        shutil.rmtree(temp_dir, ignore_errors=True)
    grew = re.search(r"grew: (\d+) processes in (\d+) s", output)
    assert grew, output
    assert int(grew.group(1)) >= 4, f"only {grew.group(1)} worker processes ran chunks after a 4-CPU node joined"
    assert int(grew.group(2)) < 26, f"{grew.group(2)} s: the node that joined barely helped (30 s on one CPU)"


def _run_on_own_head(num_cpus: int, scenario: str, extra_env: dict) -> str:
    """Run ``_RUN_ON_HEAD`` in a fresh process against a head node of its own; return its output."""
    from tests.engines.ray import start_ray_head

    temp_dir = tempfile.mkdtemp(prefix="glimpse-ray-")
    head, address = start_ray_head(temp_dir, num_cpus=num_cpus)
    try:
        env = {**os.environ, **extra_env, "RAY_ADDRESS": ""}
        done = subprocess.run(
            [sys.executable, "-c", _RUN_ON_HEAD, address, str(head.pid), scenario],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
        )
        return f"{done.stdout}\n(exit {done.returncode})\n{done.stderr[-3000:]}"
    finally:
        stop_process_group(head, grace=5)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_killed_head_node_is_a_cluster_lost_error_and_the_caller_lives_on(ray_auth_token):
    output = _run_on_own_head(2, "lost", {"RAY_gcs_rpc_server_reconnect_timeout_s": "20"})
    lost = re.search(r"lost after (\d+) s: (.*)", output)
    assert lost, f"no ClusterLostError:\n{output}"
    assert int(lost.group(1)) < 30 and "Ray head node at 127.0.0.1" in lost.group(2)
    assert "alive" in output, f"the caller did not survive losing its head node:\n{output}"


def test_a_head_without_cpus_is_a_no_workers_error(ray_auth_token):
    output = _run_on_own_head(0, "no-workers", {"GLIMPSE_NO_WORKERS_TIMEOUT": "10"})
    assert "no workers: no worker was connected to the cluster at 127.0.0.1" in output, output
    assert "LaunchWorker --address 127.0.0.1" in output


@pytest.mark.parametrize("token", ["wrong", "none"])
def test_a_pool_without_the_clusters_token_fails_naming_where_the_token_goes(ray_head, token, tmp_path):
    token_file = tmp_path / "auth_token"
    if token == "wrong":
        token_file.write_text(secrets.token_hex(32))
        token_file.chmod(0o600)
    env = {"RAY_ADDRESS": None, "RAY_AUTH_TOKEN_PATH": None, "HOME": str(tmp_path), "RAY_AUTH_TOKEN": None}
    if token == "wrong":
        env["RAY_AUTH_TOKEN_PATH"] = str(token_file)
    started = time.monotonic()
    code = "import sys\nfrom glimpse.pools.ray_cluster import MakePool\nMakePool(sys.argv[1])"
    result = run_python(code, [ray_head], env=env)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and "ClusterConnectionError" in last, result.stderr[-3000:]
    assert ray_head in last and "RAY_AUTH_TOKEN" in last and "token" in last, last
    assert time.monotonic() - started < 60
