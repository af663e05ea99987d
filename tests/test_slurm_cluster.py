"""The slurm pool on a real SLURM of two simulated hosts (tests/slurm_lab.py): chunks run inside
SLURM jobs, jobs adapt to the work, outlive nothing, survive their time limit and a ``scancel``,
and the waits and refusals say what SLURM said."""

from __future__ import annotations

import sys
import textwrap
import time

import pytest

from glimpse.pools import JobSubmitError, NoWorkersError
from glimpse.pools.cluster.reachability import tcp_answers
from tests import helpers
from tests.engines._processes import free_port, start_process, stop_process_group

pytest.importorskip("dask_jobqueue")

from glimpse.pools.slurm_cluster import MakePool  # noqa: E402

pytestmark = pytest.mark.timeout(900)
#: SLURM's smallest time limit: a worker takes chunks for 40 s of it (the 20 s margin).
SHORTEST_WALLTIME = "00:01:00"
#: The worker lifetime SHORTEST_WALLTIME leaves, at most (40 s and its 5 s stagger).
LIFETIME_SECONDS = 45.0


def _items(count: int, seconds: float) -> list[tuple[int, float]]:
    return [(i, seconds) for i in range(count)]


def _wait_until_gone(lab, job_ids: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not {job for job, _, _ in lab.jobs()} & set(job_ids):
            return
        time.sleep(1)
    raise AssertionError(f"jobs {job_ids} still in squeue after {timeout:.0f} s: {lab.jobs()}")


def test_chunks_run_in_the_jobs_of_the_pool_over_tls(slurm_lab, slurm_pool):
    results = slurm_pool.map(helpers.slurm_job_after, _items(8, 0.5), chunksize=1)  # both workers busy
    assert [r[0] for r in results] == list(range(8))
    assert {r[1] for r in results} <= set(slurm_pool.job_ids)
    assert all(r[1] for r in results)
    assert {r[3] for r in results} == {"node1", "node2"}  # the lab puts each job on its least loaded node
    # TLS by default, and the scheduler listens on the caller's address on the nodes' network only.
    assert slurm_pool.address.startswith(f"tls://{slurm_lab.hosts.caller_address}:")


def test_adapts_up_from_zero_jobs_and_back_to_zero(slurm_lab):
    with MakePool(max_jobs=2, memory="1GB", walltime="00:05:00") as pool:
        assert pool.job_ids == []
        results = pool.map(helpers.slurm_job_after, _items(40, 0.5), chunksize=1)
        assert [r[0] for r in results] == list(range(40))
        assert len({r[1] for r in results}) == 2, f"the call grew to jobs {sorted({r[1] for r in results})} only"
        _wait_until_gone(slurm_lab, pool.job_ids)  # the call ended: the jobs end while the pool is open
        assert pool.map(helpers.times_ten, [1, 2]) == [10, 20]  # and come back for the next call
        address = pool.address
    _wait_until_gone(slurm_lab, pool.job_ids)
    assert not tcp_answers(address), f"the closed pool's scheduler still listens at {address}"


def test_a_call_across_five_job_lifetimes_loses_nothing(slurm_lab):
    """Workers retire before SLURM's time limit and new jobs take over: every item comes back once, in
    order, from five generations of jobs or more, and no job reaches its time limit."""
    item_seconds = 0.5
    count = int(5 * LIFETIME_SECONDS * 2.5 / item_seconds)  # two workers, and a third while one hands over
    with MakePool(jobs=2, memory="1GB", walltime=SHORTEST_WALLTIME) as pool:
        indexes, jobs = [], set()
        for index, job, _, _ in pool.imap(helpers.slurm_job_after, _items(count, item_seconds)):
            indexes.append(index)
            jobs.add(job)
        ids = pool.job_ids
    assert indexes == list(range(count))
    assert len(jobs) >= 10, f"results came from jobs {sorted(jobs)} only"
    _wait_until_gone(slurm_lab, ids)
    states = slurm_lab.run(["scontrol", "-o", "show", "job"]).stdout
    assert "JobState=TIMEOUT" not in states, "a worker job reached its time limit instead of retiring before it"


def test_a_cancelled_worker_job_loses_nothing(slurm_lab):
    with MakePool(jobs=2, memory="1GB", walltime="00:05:00") as pool:
        seen, victim = [], None
        for index, job, _, _ in pool.imap(helpers.slurm_job_after, _items(60, 0.2)):
            seen.append(index)
            if victim is None and len(seen) == 10:
                victim = job
                slurm_lab.run(["scancel", victim])
        assert seen == list(range(60))
        deadline = time.monotonic() + 60
        while len(pool.job_ids) < 3 and time.monotonic() < deadline:
            time.sleep(1)
        assert len(pool.job_ids) >= 3, f"no job replaced the cancelled job {victim}: {pool.job_ids}"
        ids = pool.job_ids
    _wait_until_gone(slurm_lab, ids)


def test_no_workers_error_names_the_pending_job_and_slurms_reason(slurm_lab, monkeypatch):
    monkeypatch.setenv("GLIMPSE_NO_WORKERS_TIMEOUT", "15")
    # Longer than the partition's MaxTime: SLURM accepts the job and leaves it pending.
    with MakePool(jobs=1, memory="1GB", walltime="02:00:00") as pool:
        with pytest.raises(NoWorkersError) as raised:
            pool.map(helpers.times_ten, range(4))
        ids = pool.job_ids
    assert ids and f"job {ids[0]} PENDING (PartitionTimeLimit)" in str(raised.value)
    _wait_until_gone(slurm_lab, ids)


def test_a_job_slurm_refuses_fails_at_once_with_sbatchs_message(slurm_lab):
    before = slurm_lab.jobs()
    with pytest.raises(JobSubmitError, match="Requested node configuration is not available"):
        MakePool(jobs=1, memory="50GB")
    assert _ids(slurm_lab.jobs()) <= _ids(before)  # no job submitted (earlier tests' jobs may change state)


def test_inside_an_sbatch_script_workers_start_with_srun(slurm_lab):
    output = slurm_lab.shared / "in-allocation.out"
    script = slurm_lab.shared / "in-allocation.sh"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            #SBATCH -n 2 -o {output}
            exec {sys.executable} - <<'EOF'
            import os
            import cloudpickle
            from tests import helpers
            cloudpickle.register_pickle_by_value(helpers)
            from glimpse.pools import MakePool
            with MakePool("slurm") as pool:
                results = pool.map(helpers.slurm_job_after, [(i, 0.05) for i in range(20)])
            print("indexes", [r[0] for r in results] == list(range(20)))
            print("jobs", sorted({{r[1] for r in results}}), "mine", os.environ["SLURM_JOB_ID"])
            print("steps", sorted({{r[2] for r in results}}))
            EOF
            """
        )
    )
    submitted = slurm_lab.run(["sbatch", "--parsable", "--chdir", str(_repository()), str(script)])
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    _wait_until_gone(slurm_lab, [job], timeout=180)
    text = output.read_text()
    assert "indexes True" in text, text
    assert f"jobs ['{job}'] mine {job}" in text, text
    assert "steps ['0']" in text, text


def test_a_pool_keeps_worker_jobs_for_a_scheduler_on_the_login_node(slurm_lab, tmp_path):
    """``LaunchBroker`` picks the address the nodes reach; ``MakePool(address=...)`` submits jobs for it."""
    from distributed import Security

    from glimpse.pools.backends.slurm.tls import on_files

    credentials = slurm_lab.shared / "login-node-tls"
    credentials.mkdir()
    security = on_files(Security.temporary(), credentials)
    files = [security.tls_ca_file, security.tls_scheduler_cert, security.tls_scheduler_key]
    port = free_port()
    broker = start_process(
        [sys.executable, "-m", "glimpse.pools.cli", "--type", "slurm", "LaunchBroker", "--port", str(port)]
        + ["--tls-ca-file", files[0], "--tls-cert", files[1], "--tls-key", files[2]],
        tmp_path / "broker.log",
    )
    try:
        address = f"tls://{slurm_lab.hosts.caller_address}:{port}"
        deadline = time.monotonic() + 60
        while not tcp_answers(address) and time.monotonic() < deadline:
            time.sleep(0.2)
        with MakePool(jobs=2, address=address, security=security, memory="1GB", walltime="00:05:00") as pool:
            results = pool.map(helpers.slurm_job_after, _items(20, 0.05))
            ids = pool.job_ids
        assert [r[0] for r in results] == list(range(20))
        assert {r[1] for r in results} <= set(ids) and len(ids) >= 2
        _wait_until_gone(slurm_lab, ids)
    finally:
        stop_process_group(broker)


def _repository():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


def _ids(jobs: list[tuple[str, str, str]]) -> set[str]:
    return {job for job, _, _ in jobs}
