"""Dask workers as SLURM jobs, through dask-jobqueue's ``SLURMCluster``, with what it leaves out:
a record of every job id and of every refused ``sbatch``, retirement before the time limit, and a
scheduler that listens only where the compute nodes reach it."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from dask_jobqueue import SLURMCluster
from dask_jobqueue.slurm import SLURMJob
from distributed import Security

from glimpse.pools.backends.dask.launch import TCP_TIMEOUT_VARIABLE, engine_environment
from glimpse.pools.backends.slurm import queue
from glimpse.pools.backends.slurm.lifetime import Lifetime

JOB_NAME = "glimpse-worker"


@dataclass
class JobLedger:
    """Every worker job a pool submitted, and what ``sbatch`` said when it refused one."""

    submitted: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, job_id: str) -> None:
        with self.lock:
            self.submitted.append(job_id)

    def refuse(self, message: str) -> None:
        with self.lock:
            self.refusals.append(message)

    def ids(self) -> list[str]:
        with self.lock:
            return list(self.submitted)


def ledgered_job_class(ledger: JobLedger) -> type[SLURMJob]:
    """A ``SLURMJob`` that records its id in ``ledger``, and ``sbatch``'s message when it is refused
    (dask-jobqueue only logs it, and the pool would wait for workers that never come)."""

    class LedgeredSLURMJob(SLURMJob):
        async def start(self) -> None:
            try:
                await super().start()
            except RuntimeError as refused:
                ledger.refuse(" ".join(str(refused).split()))
                raise
            ledger.add(str(self.job_id))

    return LedgeredSLURMJob


@dataclass
class JobSpec:
    """What each worker job asks SLURM for, as ``MakePool`` takes it."""

    cores: int
    memory: str
    walltime: str
    queue: str | None
    account: str | None
    job_extra: list[str]
    lifetime: Lifetime
    directory: Path

    def job_options(self) -> dict:
        """``SLURMJob``'s arguments: one worker process of ``cores`` threads per job."""
        return {
            "cores": self.cores,
            "memory": self.memory,
            "processes": 1,
            "walltime": self.walltime,
            "queue": self.queue,
            "account": self.account,
            "job_name": JOB_NAME,
            "job_extra_directives": list(self.job_extra),
            "log_directory": str(self.directory / "logs"),
            "job_script_prologue": job_prologue(),
            "worker_extra_args": [*self.lifetime.worker_arguments(), "--dashboard-address", "127.0.0.1:0"],
        }


def start_job_cluster(spec: JobSpec, host: str, security: Security | None, ledger: JobLedger) -> SLURMCluster:
    """A scheduler in this process on ``host``, whose workers are SLURM jobs of ``spec``; none submitted yet.

    ``sbatch --test-only`` checks the job first, so a job SLURM would refuse fails here, with its message.
    """
    cluster = SLURMCluster(
        job_cls=ledgered_job_class(ledger),  # type: ignore[arg-type]  # dask-jobqueue annotates a class as an instance
        security=security,
        protocol="tls://" if security is not None else "tcp://",
        shared_temp_directory=str(spec.directory),
        scheduler_options={"host": host, "dashboard_address": f"{host}:0"},
        **spec.job_options(),
    )
    try:
        check_job_script(cluster.job_script(), spec.directory)
    except BaseException:
        cluster.close()
        raise
    return cluster


def check_job_script(script: str, directory: Path) -> None:
    """``sbatch --test-only`` on a worker job script: ``JobSubmitError`` with SLURM's message if refused."""
    path = directory / "check-job.sh"
    path.write_text(script)
    try:
        queue.check_submission(str(path))
    finally:
        path.unlink(missing_ok=True)


def job_prologue() -> list[str]:
    """The job script's first commands: Dask's TCP timeout set to glimpse's silence timeout, as for
    every Dask worker glimpse starts (jobs inherit the rest of the submitter's environment)."""
    return [f"export {TCP_TIMEOUT_VARIABLE}={engine_environment()[TCP_TIMEOUT_VARIABLE]}"]
