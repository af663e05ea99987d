"""``glimpse-cluster --type slurm`` on a real SLURM of two simulated hosts (tests/slurm_lab.py), as a
user on the login node runs it: a TLS scheduler there (``LaunchBroker``), worker jobs that join it
(``LaunchWorker --jobs``) and are replaced when they end, ``PingWorkers``, ``KillWorkers``, and the
refusals that end ``LaunchWorker`` with one line."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import helpers
from tests.engines._processes import free_port, start_process, stop_process_group

pytest.importorskip("dask_jobqueue")
pytest.importorskip("cryptography")

from distributed import Client, Security  # noqa: E402

from glimpse.pools.dask_cluster import MakePool  # noqa: E402

pytestmark = pytest.mark.timeout(300)
PROG = "glimpse-cluster --type slurm"
JOBS = 2
#: A bound on waits for SLURM and Dask, never a measurement.
HANG_SECONDS = 60.0


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "glimpse.pools.cli", "--type", "slurm", *args]


@pytest.fixture(scope="module")
def tls_files(slurm_lab) -> dict[str, str]:
    """A self-signed certificate (its own CA) and its key, where every host sees them."""
    directory = slurm_lab.shared / "verbs-tls"
    directory.mkdir(exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=dask"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return {"ca": str(cert), "cert": str(cert), "key": str(key)}


def _tls_options(files: dict[str, str]) -> list[str]:
    return ["--tls-ca-file", files["ca"], "--tls-cert", files["cert"], "--tls-key", files["key"]]


def _client_security(files: dict[str, str]) -> Security:
    return Security(
        tls_ca_file=files["ca"], tls_client_cert=files["cert"], tls_client_key=files["key"], require_encryption=True
    )


def _answers(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) == 0


def _wait_listening(host: str, port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + HANG_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        if _answers(host, port):
            return
        time.sleep(0.2)
    raise AssertionError(f"nothing listened on {host}:{port}: {log.read_text(errors='replace')[-3000:]}")


def _wait_for(what: str, ready, timeout: float = HANG_SECONDS):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = ready()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout:.0f} s")


def _submitted(log: Path) -> list[str]:
    """The job ids LaunchWorker says it submitted, oldest first."""
    return re.findall(r"submitted worker job (\d+)", log.read_text(errors="replace"))


def _queued(lab) -> dict[str, str]:
    return {job: state for job, state, _ in lab.jobs()}


@pytest.fixture(scope="module")
def broker(slurm_lab, tls_files, tmp_path_factory):
    """``LaunchBroker`` with TLS on the caller's address on the nodes' network; its address."""
    log = tmp_path_factory.mktemp("verbs") / "broker.log"
    host, port = slurm_lab.hosts.caller_address, free_port()
    process = start_process(
        _cli("LaunchBroker", "--host", host, "--port", str(port), *_tls_options(tls_files)), log, env=slurm_lab.env
    )
    try:
        _wait_listening(host, port, process, log)
        yield f"tls://{host}:{port}"
    finally:
        stop_process_group(process)


@pytest.fixture(scope="module")
def launched(slurm_lab, tls_files, broker, tmp_path_factory):
    """``LaunchWorker --jobs 2`` for ``broker``, its workers connected: ``(process, log)``."""
    log = tmp_path_factory.mktemp("verbs") / "launch-worker.log"
    directory = slurm_lab.shared / "verbs-jobs"
    options = ["--jobs", str(JOBS), "--walltime", "00:05:00", "--memory", "1GB", "--directory", str(directory)]
    process = start_process(
        _cli("LaunchWorker", "--address", broker, *options, *_tls_options(tls_files)), log, env=slurm_lab.env
    )
    try:
        with Client(broker, security=_client_security(tls_files), timeout=30, set_as_default=False) as client:
            client.wait_for_workers(JOBS, timeout=HANG_SECONDS)
        yield process, log
    finally:
        stop_process_group(process)
        ids = _submitted(log)
        _wait_for(f"jobs of LaunchWorker {ids} left squeue", lambda: not set(_queued(slurm_lab)) & set(ids))


def _verb(lab, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_cli(*args), capture_output=True, text=True, timeout=120, env={**os.environ, **lab.env})


def test_launch_broker_listens_where_the_nodes_reach_it_by_default(slurm_lab, tls_files, tmp_path):
    log = tmp_path / "broker.log"
    port = free_port()
    process = start_process(_cli("LaunchBroker", "--port", str(port), *_tls_options(tls_files)), log, env=slurm_lab.env)
    try:
        _wait_listening(slurm_lab.hosts.caller_address, port, process, log)
        assert f"tls://{slurm_lab.hosts.caller_address}:{port}" in log.read_text(errors="replace")
        assert not _answers("127.0.0.1", port), "the scheduler listens on loopback too"
    finally:
        stop_process_group(process)


def test_worker_jobs_run_the_calls_of_a_dask_pool(slurm_lab, tls_files, broker, launched):
    _, log = launched
    ids = _submitted(log)
    assert len(ids) == JOBS, log.read_text()
    assert all(_queued(slurm_lab).get(job) == "RUNNING" for job in ids), slurm_lab.jobs()
    with MakePool(broker, security=_client_security(tls_files)) as pool:
        results = pool.map(helpers.slurm_job_after, [(i, 0.05) for i in range(20)])
    assert [r[0] for r in results] == list(range(20))
    assert {r[1] for r in results} <= set(ids)


#: PingWorkers and KillWorkers find each worker's job with ``client.run(os.environ.get, "SLURM_JOB_ID")``:
#: the bound method pickles the caller's ``os.environ`` with it, so every worker answers None.
def test_ping_workers_prints_each_worker_with_its_job_running(slurm_lab, tls_files, broker, launched):
    _, log = launched
    pinged = _verb(slurm_lab, "PingWorkers", "--address", broker, *_tls_options(tls_files))
    assert pinged.returncode == 0, pinged.stderr
    lines = pinged.stdout.strip().splitlines()
    assert len(lines) == JOBS, pinged.stdout
    named = [re.search(r"job (\d+) RUNNING$", line) for line in lines]
    assert all(named) and sorted(m.group(1) for m in named) == sorted(_submitted(log)), pinged.stdout


def test_launch_worker_replaces_a_cancelled_job(slurm_lab, launched):
    _, log = launched
    victim = _submitted(log)[0]
    slurm_lab.run(["scancel", victim])
    replacement = _wait_for("a job replacing the cancelled one", lambda: _submitted(log)[JOBS:], timeout=30)
    assert replacement[0] not in (victim, *_submitted(log)[:JOBS])
    _wait_for(f"the replacement {replacement[0]} in squeue", lambda: replacement[0] in _queued(slurm_lab))


def test_kill_workers_retires_the_workers_and_cancels_their_jobs(slurm_lab, tls_files, broker, launched):
    with Client(broker, security=_client_security(tls_files), timeout=30, set_as_default=False) as client:
        client.wait_for_workers(JOBS, timeout=HANG_SECONDS)
        serving = {job for _, job, _, _ in client.run(helpers.slurm_job_after, (0, 0)).values() if job}
    assert len(serving) == JOBS
    killed = _verb(slurm_lab, "KillWorkers", "--address", broker, *_tls_options(tls_files))
    assert killed.returncode == 0, killed.stderr
    assert f"retired {JOBS} workers" in killed.stdout and all(job in killed.stdout for job in serving), killed.stdout
    _wait_for(f"the killed workers' jobs {serving} left squeue", lambda: not set(_queued(slurm_lab)) & serving)


def test_stopping_launch_worker_cancels_every_job_it_submitted(slurm_lab, launched):
    process, log = launched
    _wait_for("a job of LaunchWorker in squeue", lambda: set(_queued(slurm_lab)) & set(_submitted(log)))
    stop_process_group(process)
    assert process.returncode == 0, log.read_text()
    ids = _submitted(log)
    _wait_for(f"every job of LaunchWorker {ids} left squeue", lambda: not set(_queued(slurm_lab)) & set(ids))


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--walltime", "soon"], "walltime 'soon' is not a SLURM time"),
        (["--walltime", "00:00:20"], "ask for a longer walltime"),
        (["--memory", "50GB"], "Requested node configuration is not available"),
    ],
    ids=["not-a-time", "too-short", "refused"],
)
def test_launch_worker_that_cannot_submit_exits_1_with_one_line(slurm_lab, tmp_path, options, said):
    before = slurm_lab.jobs()
    args = ["LaunchWorker", "--address", "tls://127.0.0.1:1", "--directory", str(tmp_path), *options]
    result = _verb(slurm_lab, *args)
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{PROG} LaunchWorker: error: ") and said in lines[0], result.stderr
    assert _ids(slurm_lab.jobs()) <= _ids(before)  # no job submitted (earlier tests' jobs may change state)


def _ids(jobs: list[tuple[str, str, str]]) -> set[str]:
    return {job for job, _, _ in jobs}
