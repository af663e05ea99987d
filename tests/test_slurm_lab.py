"""The SLURM lab of tests/slurm_lab.py, through real SLURM: nodes, srun, sbatch, a pending job, and a
close that leaves no namespace, link or process behind."""

from __future__ import annotations

import logging
import os
import subprocess
import time

import psutil
import pytest

from tests.slurm_lab import SlurmLab, missing_requirement, start_slurm_lab

log = logging.getLogger(__name__)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    reason = missing_requirement()
    if reason:
        pytest.skip(f"SLURM lab {reason}")
    started = time.monotonic()
    slurm = start_slurm_lab(tmp_path_factory.mktemp("slurm"), nodes=2)
    log.info("SLURM lab of 2 nodes up in %.1f s", time.monotonic() - started)
    yield slurm
    slurm.close()


def test_sinfo_shows_every_node_idle(lab):
    result = lab.run(["sinfo", "-h", "-N", "-p", "debug", "-o", "%N %T"])
    assert sorted(result.stdout.splitlines()) == ["node1 idle", "node2 idle"], result.stdout + result.stderr


def test_srun_from_the_caller_runs_on_both_node_hosts(lab):
    result = lab.run(["srun", "-N2", "hostname"])
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == ["node1", "node2"]


def test_a_batch_job_runs_with_its_job_id_and_writes_its_output_to_the_shared_directory(lab):
    submitted = lab.run(
        ["sbatch", "--parsable", "-o", f"{lab.shared}/hello-%j.out", "--wrap", "echo job=$SLURM_JOB_ID on $(hostname)"]
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    lab.wait_idle(timeout=30)
    output = (lab.shared / f"hello-{job}.out").read_text()
    assert output.startswith(f"job={job} on node"), output


def test_a_job_asking_more_cpus_than_any_node_stays_pending_until_cancelled(lab):
    submitted = lab.run(["sbatch", "--parsable", "-c", "8", "-o", f"{lab.shared}/never-%j.out", "--wrap", "true"])
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    deadline = time.monotonic() + 20
    while (jobs := lab.jobs()) != [(job, "PENDING", "PartitionConfig")] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert jobs == [(job, "PENDING", "PartitionConfig")]
    cancelled = lab.run(["scancel", job])
    assert cancelled.returncode == 0, cancelled.stderr
    lab.wait_idle(timeout=15)


def test_close_with_a_job_running_leaves_nothing_behind(lab):
    submitted = lab.run(["sbatch", "--parsable", "-o", f"{lab.shared}/sleep-%j.out", "--wrap", "sleep 300"])
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    deadline = time.monotonic() + 20
    while lab.jobs() != [(job, "RUNNING", "None")] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert lab.jobs() == [(job, "RUNNING", "None")]
    traces = _traces(lab)
    started = time.monotonic()
    lab.close()
    log.info("SLURM lab closed in %.1f s with a job running", time.monotonic() - started)
    assert _left(traces) == {}
    lab.close()


def _traces(lab: SlurmLab) -> dict:
    """What a lab leaves behind if its close fails: names of its namespaces and links, its hosts'
    PID namespaces (job steps live there, in sessions of their own), its process groups."""
    hosts = lab.hosts
    groups = {process.pid for host in hosts.hosts for process in [*host.processes, host.holder] if process}
    return {
        "netns": f"glimpse-{hosts.tag}-",
        "links": (f"gpb{hosts.tag}", f"gp{hosts.tag}"),
        "pid namespaces": {os.readlink(f"/proc/{host.entry_pid}/ns/pid") for host in hosts.hosts},
        "groups": groups | ({lab._munged.pid} if lab._munged else set()),
    }


def _left(traces: dict) -> dict[str, list[str]]:
    """What is left of ``traces``; a zombie (ended, waiting for the machine's init to reap it) is not."""
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout.splitlines()
    left = {
        "netns": [line for line in namespaces if line.startswith(traces["netns"])],
        "links": [line for line in links if line.startswith(traces["links"])],
        "processes": [
            f"{process.pid} {' '.join(process.info['cmdline'] or [])}"
            for process in psutil.process_iter(["cmdline", "status"])
            if process.info["status"] != psutil.STATUS_ZOMBIE and _is_the_labs(process.pid, traces)
        ],
    }
    return {what: found for what, found in left.items() if found}


def _is_the_labs(pid: int, traces: dict) -> bool:
    try:
        return os.getpgid(pid) in traces["groups"] or os.readlink(f"/proc/{pid}/ns/pid") in traces["pid namespaces"]
    except OSError:
        return False
