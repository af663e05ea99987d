"""Keeping a number of worker jobs for a scheduler that is not in this process (``LaunchWorker --jobs``):
each job that ends (its time limit, a ``scancel``, a failed node) is replaced, until stopped."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from dask_jobqueue.slurm import SLURMJob
from distributed import Security

from glimpse.pools.backends.slurm import queue
from glimpse.pools.backends.slurm.jobs import JobLedger, JobSpec
from glimpse.pools.errors import JobSubmitError

log = logging.getLogger(__name__)

CHECK_SECONDS = 5.0


def worker_job_script(spec: JobSpec, scheduler: str, security: Security | None) -> str:
    """The job script of one worker of ``scheduler``; each job names its worker after its job id."""
    options = spec.job_options()
    job = SLURMJob(
        scheduler=scheduler,
        name="glimpse-$SLURM_JOB_ID",
        security=security,
        protocol="tls://" if security is not None else "tcp://",
        **options,
    )
    return job.job_script()


class JobKeeper:
    """Keeps ``count`` jobs of ``script`` submitted or running; :meth:`stop` cancels them (by id)."""

    def __init__(self, script: str, count: int, directory: Path, ledger: JobLedger | None = None):
        self.path = directory / "worker-job.sh"
        self.path.write_text(script)
        self.count = count
        self.ledger = ledger or JobLedger()
        self.live: list[str] = []
        self._stopped = threading.Event()

    def keep(self) -> None:
        """Submit jobs until ``count`` are queued or running; check again every few seconds until stopped.
        A refused ``sbatch`` raises ``JobSubmitError`` with SLURM's message (and is in the ledger)."""
        while not self._stopped.is_set():
            try:
                self.top_up()
            except JobSubmitError as refused:
                self.ledger.refuse(str(refused))
                raise
            self._stopped.wait(CHECK_SECONDS)

    def keep_in_background(self) -> None:
        """:meth:`keep` in a thread of its own, until :meth:`stop`."""
        threading.Thread(target=self._keep_quietly, name="glimpse-slurm-jobs", daemon=True).start()

    def _keep_quietly(self) -> None:
        try:
            self.keep()
        except Exception as exc:  # in the ledger (a refusal) or logged: the pool's health reports it
            log.warning("stopped submitting worker jobs: %s", exc)

    def top_up(self) -> None:
        """Replace the jobs that ended since the last check."""
        states = queue.job_states(self.live)
        ended = [j for j in self.live if j not in states or states[j].state in queue.ENDED]
        for job_id in ended:
            log.info("%s ended; submitting a new worker job", states.get(job_id, f"job {job_id}"))
        self.live = [j for j in self.live if j not in ended]
        while len(self.live) < self.count and not self._stopped.is_set():
            job_id = queue.submit(str(self.path))
            self.ledger.add(job_id)
            self.live.append(job_id)
            log.info("submitted worker job %s", job_id)

    def stop(self) -> None:
        """Stop replacing jobs and cancel every job this keeper submitted."""
        self._stopped.set()
        queue.cancel(self.ledger.ids())
