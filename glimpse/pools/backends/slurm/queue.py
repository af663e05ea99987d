"""What glimpse asks SLURM itself: its commands, the state of our jobs and why they wait, its nodes,
and how long a job may run."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

from glimpse.pools.errors import JobSubmitError

#: The Debian/Ubuntu packages of SLURM's commands (sbatch, squeue, scancel, srun, scontrol).
INSTALL_HINT = "install SLURM's commands (Debian/Ubuntu: apt-get install slurm-client) or run this on a login node"
COMMAND_SECONDS = 30.0
#: Job states after which a job runs no more (squeue's long names).
ENDED = {
    *("BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED"),
    *("NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT"),
}


@dataclass(frozen=True)
class JobState:
    """One job as SLURM reports it: ``state`` (``PENDING``, ``RUNNING``, ``FAILED`` ...) and ``reason``
    (why it waits or ended: ``Resources``, ``Priority``, ``PartitionConfig``, ``NonZeroExitCode`` ...)."""

    job_id: str
    state: str
    reason: str = ""

    def __str__(self) -> str:
        reason = f" ({self.reason})" if self.reason and self.reason != "None" else ""
        return f"job {self.job_id} {self.state}{reason}"


def slurm(args: list[str], timeout: float = COMMAND_SECONDS) -> str:
    """Run a SLURM command; its standard output. A ``RuntimeError`` with its own message if it fails,
    or with how to install it if it is missing."""
    if shutil.which(args[0]) is None:
        raise FileNotFoundError(f"`{args[0]}` was not found: {INSTALL_HINT}")
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip() or f"exit code {result.returncode}"
        raise RuntimeError(f"`{' '.join(args)}` failed: {message}")
    return result.stdout


def job_states(job_ids: list[str]) -> dict[str, JobState]:
    """The state of each job of ``job_ids`` that SLURM still knows (``squeue``, then ``scontrol`` for
    jobs that ended a moment ago, while SLURM keeps their record)."""
    if not job_ids:
        return {}
    states: dict[str, JobState] = {}
    try:
        listing = slurm(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i|%T|%r"])
    except RuntimeError:  # squeue refuses the whole list once one id is unknown to it
        listing = ""
    for line in listing.splitlines():
        job_id, state, reason = (line.split("|") + ["", ""])[:3]
        states[job_id.strip()] = JobState(job_id.strip(), state.strip(), reason.strip())
    for job_id in job_ids:
        if job_id not in states:
            found = _scontrol_state(job_id)
            if found is not None:
                states[job_id] = found
    return states


def _scontrol_state(job_id: str) -> JobState | None:
    try:
        text = slurm(["scontrol", "-o", "show", "job", job_id])
    except RuntimeError:
        return None
    state = re.search(r"\bJobState=(\S+)", text)
    reason = re.search(r"\bReason=(\S+)", text)
    if state is None:
        return None
    return JobState(job_id, state.group(1), reason.group(1) if reason else "")


def cancel(job_ids: list[str]) -> None:
    """``scancel`` these jobs (by id; jobs already gone are fine)."""
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=COMMAND_SECONDS)


def submit(script_path: str) -> str:
    """``sbatch`` a job script; its job id. ``JobSubmitError`` with sbatch's own message if refused."""
    try:
        out = slurm(["sbatch", "--parsable", script_path])
    except RuntimeError as refused:
        raise JobSubmitError(f"SLURM refused the worker job: {refused}") from None
    return out.strip().split(";")[0]


def check_submission(script_path: str) -> None:
    """Ask SLURM whether it would accept the job script (``sbatch --test-only``), without submitting it:
    ``JobSubmitError`` with sbatch's message if not."""
    try:
        slurm(["sbatch", "--test-only", script_path])
    except RuntimeError as refused:
        raise JobSubmitError(
            f"SLURM would refuse the worker jobs: {refused}. Change the pool's cores=, memory=, walltime=, "
            "queue= or job_extra= to fit the cluster (`sinfo -o '%P %l %c %m'` lists each partition's time "
            "limit, CPUs and memory per node)"
        ) from None


def node_addresses(partition: str | None = None, nodes: str | None = None) -> list[str]:
    """The addresses (``NodeAddr``) of the nodes jobs run on: of ``partition``, else of every
    partition; or of ``nodes`` (a node list such as ``node[1-4]``)."""
    args = ["sinfo", "-h", "-N", "-o", "%o"]
    if partition:
        args += ["-p", partition]
    if nodes:
        args += ["-n", nodes]
    return sorted({line.strip() for line in slurm(args).splitlines() if line.strip()})


def seconds_of(walltime: str) -> int:
    """SLURM's time format in seconds: ``minutes``, ``minutes:seconds``, ``hours:minutes:seconds``,
    ``days-hours``, ``days-hours:minutes``, ``days-hours:minutes:seconds``."""
    text = str(walltime).strip()
    days, _, rest = text.rpartition("-") if "-" in text else ("0", "", text)
    try:
        parts = [int(p) for p in rest.split(":")]
        day_count = int(days)
    except ValueError:
        raise ValueError(f"walltime {walltime!r} is not a SLURM time (minutes, HH:MM:SS or D-HH:MM:SS)") from None
    if "-" in text:
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 1:
        hours, minutes, seconds = 0, parts[0], 0
    elif len(parts) == 2:
        hours, minutes, seconds = 0, parts[0], parts[1]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:
        raise ValueError(f"walltime {walltime!r} is not a SLURM time (minutes, HH:MM:SS or D-HH:MM:SS)")
    total = ((day_count * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise ValueError(f"walltime {walltime!r} must be more than 0")
    return total
