"""The backend of ``SlurmPool``: Dask's backend, plus what SLURM says when no worker is there.

Chunks run as on any Dask cluster the pool owns (``DaskBackend``): a worker that leaves (its
lifetime before the job's time limit, a ``scancel``, a failed node) has its chunks re-run by Dask
on the others. When no worker is connected, the call's warning and ``NoWorkersError`` name the
pool's jobs and SLURM's reason for each (``Resources``, ``Priority``, ``PartitionConfig`` ...); a
refused ``sbatch`` ends the call at once with its message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

from distributed import Client

from glimpse.pools.backends.dask.backend import DaskBackend
from glimpse.pools.backends.slurm import queue
from glimpse.pools.backends.slurm.jobs import JobLedger
from glimpse.pools.contract import Health

#: How many of the pool's latest jobs a no-workers message names.
_JOBS_NAMED = 8


class SlurmBackend(DaskBackend):
    """Runs chunks on the Dask ``client`` of ``cluster`` (its scheduler in this process), whose workers
    are the SLURM jobs in ``ledger`` (or an ``srun`` step: ``step_failure`` says why it ended, if it
    did, and ``no_jobs`` what the workers are waiting for). ``capacity``: the threads an adapting
    pool may grow to. ``on_close`` ends the workers glimpse started; ``directory`` (job logs, TLS
    files) is removed on close."""

    def __init__(
        self,
        client: Client,
        cluster,
        ledger: JobLedger,
        directory: Path,
        on_close: Callable[[], None] = lambda: None,
        step_failure: Callable[[], str | None] = lambda: None,
        no_jobs: str = "no SLURM job submitted yet",
        capacity: int = 0,
    ):
        super().__init__(client, owns_client=True, cluster=cluster)
        self.ledger = ledger
        self.directory = directory
        self._on_close = on_close
        self._step_failure = step_failure
        self._no_jobs = no_jobs
        self._capacity = capacity

    def workers(self) -> int:
        # Adapting, a call keeps work in flight for the threads it may grow to, not only those it has:
        # adaptive scaling asks for jobs by the work queued on the scheduler.
        return max(super().workers(), self._capacity)

    def health(self) -> Health:
        health = super().health()
        if health.workers or health.lost or health.silent:
            return health
        if self.ledger.refusals:
            return dataclasses.replace(health, lost=f"SLURM refused the worker jobs: {self.ledger.refusals[-1]}")
        failure = self._step_failure()
        if failure:
            return dataclasses.replace(health, lost=failure)
        return dataclasses.replace(health, start_workers="", waiting=self.waiting())

    def waiting(self) -> str:
        """The pool's latest jobs as SLURM reports them, with the end of the log of each that ended."""
        ids = self.ledger.ids()[-_JOBS_NAMED:]
        if not ids:
            return self._no_jobs
        try:
            states = queue.job_states(ids)
        except (OSError, RuntimeError) as exc:
            return f"SLURM jobs {', '.join(ids)} (squeue failed: {exc})"
        described = []
        for job_id in ids:
            state = states.get(job_id)
            if state is None:
                described.append(f"job {job_id} (gone from SLURM's queue)")
                continue
            text = str(state)
            if state.state == "COMPLETED":
                text += " (its worker retired; a new job replaces it)"
            elif state.state in queue.ENDED:
                text += self._log_tail(job_id)
            described.append(text)
        return "SLURM " + "; ".join(described)

    def _log_tail(self, job_id: str) -> str:
        for log in sorted((self.directory / "logs").glob(f"*-{job_id}.err")):
            lines = log.read_text(errors="replace").strip().splitlines()[-3:]
            if lines:
                return f", its log {log} ends: " + " | ".join(lines)
        return ""

    def close(self) -> None:
        try:
            super().close()
        finally:
            try:
                self._on_close()
            finally:
                with contextlib.suppress(OSError, RuntimeError):
                    queue.cancel(self.ledger.ids())  # dask-jobqueue cancels its jobs; none may outlive the pool
                shutil.rmtree(self.directory, ignore_errors=True)
