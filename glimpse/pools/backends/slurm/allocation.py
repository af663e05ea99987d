"""Dask workers inside the SLURM allocation this process runs in (under ``salloc``, or in an ``sbatch``
script): one ``srun`` step, one worker per task, on the allocation's CPUs; no new jobs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from glimpse.pools.backends.dask.launch import engine_environment
from glimpse.pools.backends.slurm import queue

JOB_VARIABLE = "SLURM_JOB_ID"
_STOP_SECONDS = 10.0


def in_allocation() -> bool:
    """Whether this process runs inside a SLURM allocation (``$SLURM_JOB_ID`` is set)."""
    return bool(os.environ.get(JOB_VARIABLE))


def allocation_nodes() -> list[str]:
    """The addresses of the allocation's nodes."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST") or ""
    return queue.node_addresses(nodes=nodelist) if nodelist else []


def error_lines(log_path: Path, most: int = 6) -> str:
    """The distinct lines of a worker log that say what went wrong (not its traceback frames)."""
    found: list[str] = []
    for line in log_path.read_text(errors="replace").splitlines():
        line = line.strip()
        if re.search(r"(Error|Exception|error:)", line) and not line.startswith(("File ", "raise ")):
            if line not in found:
                found.append(line)
    return " | ".join(found[:most]) or f"see {log_path}"


class AllocationWorkers:
    """``srun`` running one Dask worker per task of the allocation, in a process group of its own,
    until :meth:`stop` (or until the allocation ends)."""

    def __init__(self, scheduler: str, tls_arguments: list[str], log_path: Path):
        threads = os.environ.get("SLURM_CPUS_PER_TASK", "1")
        self.tasks = int(os.environ.get("SLURM_NTASKS", "1"))
        worker = [sys.executable, "-m", "distributed.cli.dask_worker", scheduler, "--nthreads", threads]
        worker += ["--dashboard-address", "127.0.0.1:0", "--death-timeout", "60", *tls_arguments]
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["srun", "--kill-on-bad-exit=0", *worker],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=engine_environment(),
                start_new_session=True,
            )

    def failure(self) -> str | None:
        """Why the step ended, if it has: srun's exit code and the end of its output."""
        code = self.process.poll()
        if code is None:
            return None
        return f"the srun step of the workers ended with exit code {code}: {error_lines(self.log_path)}"

    def stop(self) -> None:
        """End the step: SIGTERM to srun's group (srun passes it to every worker), then SIGKILL."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + _STOP_SECONDS
            while self.process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.process.poll() is not None:
                break
        self.process.wait()
