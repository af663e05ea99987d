"""When a worker job stops taking chunks: before SLURM's time limit ends its job.

A worker retires (Dask's ``--lifetime``) a margin before its job's ``walltime``: the scheduler sends
it no more chunks, a chunk it was running runs again on another worker, and the pool submits a
replacement job. The margin covers the worker's start inside its job and its retirement; SLURM
kills a job once its time is up, never before.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The margin, unless given: a tenth of the walltime, at least 20 s and at most 5 minutes.
MARGIN_FRACTION = 0.1
SHORTEST_MARGIN = 20.0
LONGEST_MARGIN = 300.0
SHORTEST_LIFETIME = 10.0


@dataclass(frozen=True)
class Lifetime:
    """A worker's lifetime in its job, and the spread (±) that keeps workers started together from
    retiring together."""

    seconds: float
    stagger: float

    def worker_arguments(self) -> list[str]:
        """The options of ``dask worker`` that retire it in time."""
        return ["--lifetime", f"{self.seconds:.0f}s", "--lifetime-stagger", f"{self.stagger:.0f}s"]


def lifetime_within(walltime_seconds: float, margin: float | None = None) -> Lifetime:
    """How long a worker in a job of ``walltime_seconds`` takes chunks; ``margin`` seconds before the
    limit by default (see :data:`MARGIN_FRACTION`), and never later than three quarters of it."""
    if margin is None:
        margin = min(LONGEST_MARGIN, max(SHORTEST_MARGIN, MARGIN_FRACTION * walltime_seconds))
    if margin < 0:
        raise ValueError(f"lifetime_margin must be 0 or more seconds, not {margin}")
    stagger = margin / 4
    seconds = walltime_seconds - margin
    if seconds - stagger < SHORTEST_LIFETIME:
        raise ValueError(
            f"a walltime of {walltime_seconds:.0f} s leaves a worker {seconds:.0f} s to take chunks after the "
            f"{margin:.0f} s margin before SLURM's time limit: ask for a longer walltime or a smaller lifetime_margin"
        )
    return Lifetime(seconds, stagger)
