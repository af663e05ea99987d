"""The slurm pool against dask-jobqueue used by hand, side by side on a SLURM lab, as ratios.

    python benchmarks/bench_slurm.py [--quick]

Starts its own SLURM 22.05 lab (tests/slurm_lab.py: two simulated nodes of 2 CPUs each; it needs root
and Debian's SLURM packages, and without them says why and exits 0) and closes it at the end. Both
contenders ask for the same jobs (1 core, 1 GB), run their scheduler in this process on the address
the nodes reach, use TLS with temporary credentials written to a directory every node sees, and
retire workers with the same ``--lifetime`` and ``--lifetime-stagger`` (glimpse's ``lifetime_within``).
By hand means what a careful user writes: ``SLURMCluster`` + ``Client`` + ``cluster.adapt(minimum=2,
maximum=2)``, then ``as_completed(client.map(...))``, each result released once read. Each item
sleeps 0.5 s (no CPU) and returns a 1 MiB numpy array.

Rows: the time from making the pool to the first result (``MakePool("slurm", jobs=2, ...)`` then
``next(pool.imap(...))``, against ``SLURMCluster(...)`` to the first of ``as_completed``), median of
3 of each (1 with ``--quick``), interleaved, after one untimed run of each; then the efficiency of
one call across job lifetimes: walltime 1 minute (SLURM's smallest, a worker lifetime of about
40 s), 2 jobs, items for about 4 lifetimes (2 with ``--quick``), timed from the moment both workers
are connected; efficiency = ideal time (items x 0.5 s / 2 workers) / wall time, and the same per
job-second: the items' time / the seconds of the jobs SLURM ran during the call (what an account is
charged; a pool that holds more jobs at times finishes sooner, at that cost).

How to read the output: a ratio above 1 means glimpse did better (by hand / glimpse for times,
glimpse / by hand for efficiencies). An efficiency above 1 means the call had more than 2 workers
for a while (a replacement job started before the worker it replaces retired). Under the table,
each contender's call says how many SLURM jobs it submitted and how many ran items, how many jobs
were running and how many workers connected on average (below 2: time spent waiting for
replacements), whether every result came back (glimpse: exactly once and in order; by hand: every
item present), and what was lost or run again: items started more than once (a worker retired or
left while running them), results the scheduler reported lost with a leaving worker,
``KilledWorker`` errors and items missing at the end.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import gc
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from workloads import PeriodicSampler

REPOSITORY = Path(__file__).resolve().parent.parent
ITEM_SECONDS = 0.5
WORKERS = 2
#: SLURM's smallest time limit.
SHORTEST_WALLTIME = "00:01:00"
#: Long enough that no worker retires while the first result is awaited.
STARTUP_WALLTIME = "00:10:00"
_WORKERS_TIMEOUT = 180.0


def sleep_array(item):
    """Run on a worker: note the start of ``item = (index, seconds, starts file)``, sleep, and return
    ``(index, SLURM job id, a 1 MiB array of index)``."""
    import os
    import time

    import numpy as np

    index, seconds, starts = item
    if starts:
        with open(starts, "a") as file:
            file.write(f"{index}\n")
    time.sleep(seconds)
    return index, os.environ.get("SLURM_JOB_ID"), np.full(2**17, float(index))


def items(count: int, starts: Path | None = None) -> list[tuple]:
    return [(index, ITEM_SECONDS, str(starts) if starts else None) for index in range(count)]


# -- the two contenders ----------------------------------------------------------------------------


def glimpse_pool(walltime: str):
    from glimpse.pools import MakePool

    return MakePool("slurm", jobs=WORKERS, cores=1, memory="1GB", walltime=walltime)


def by_hand_cluster(walltime: str, host: str, directory: Path):
    """The ``SLURMCluster`` a careful user makes for the same jobs as glimpse's."""
    from dask_jobqueue import SLURMCluster
    from distributed import Security

    from glimpse.pools.backends.slurm.lifetime import lifetime_within
    from glimpse.pools.backends.slurm.queue import seconds_of

    directory.mkdir(parents=True, exist_ok=True)
    return SLURMCluster(
        cores=1,
        memory="1GB",
        processes=1,
        walltime=walltime,
        security=Security.temporary(),
        shared_temp_directory=str(directory),
        log_directory=str(directory / "logs"),
        scheduler_options={"host": host},
        worker_extra_args=lifetime_within(seconds_of(walltime)).worker_arguments(),
    )


def glimpse_first_result(count: int) -> float:
    """Seconds from ``MakePool`` to the first result of ``imap``."""
    started = time.perf_counter()
    with glimpse_pool(STARTUP_WALLTIME) as pool:
        results = pool.imap(sleep_array, items(count))
        next(results)
        took = time.perf_counter() - started
        results.close()
    return took


def by_hand_first_result(count: int, host: str, directory: Path) -> float:
    """Seconds from ``SLURMCluster(...)`` to the first result of ``as_completed(client.map(...))``."""
    from distributed import Client, as_completed

    started = time.perf_counter()
    with by_hand_cluster(STARTUP_WALLTIME, host, directory) as cluster, Client(cluster) as client:
        cluster.adapt(minimum=WORKERS, maximum=WORKERS)
        for future in as_completed(client.map(sleep_array, items(count), pure=False)):
            future.result()
            break
        took = time.perf_counter() - started
    return took


# -- a call across job lifetimes -------------------------------------------------------------------


@dataclass
class CallReport:
    """What one call across job lifetimes did."""

    wall: float = 0.0
    complete: bool = False
    submitted: set[str] = field(default_factory=set)
    ran: set[str] = field(default_factory=set)
    mean_workers: float = 0.0
    mean_jobs: float = 0.0
    most_jobs: int = 0
    started_again: int = 0
    lost_results: int = 0
    killed: int = 0
    missing: int = 0

    def efficiency(self, count: int) -> float:
        """Ideal time (the items' time on 2 workers) / wall time."""
        return count * ITEM_SECONDS / WORKERS / self.wall

    def job_efficiency(self, count: int) -> float:
        """The items' time / the job-seconds SLURM ran for the call (what a cluster's account is charged)."""
        return count * ITEM_SECONDS / (self.mean_jobs * self.wall) if self.mean_jobs else 0.0


class Sampler(PeriodicSampler):
    """Every second while a call runs: how many workers the scheduler has, and SLURM's queue (the
    contenders run one at a time, so every job in it is the running contender's)."""

    def __init__(self, cluster, lab):
        super().__init__()
        self.cluster = cluster
        self.lab = lab
        self.workers: list[int] = []
        self.running: list[int] = []
        self.jobs: set[str] = set()

    def sample(self) -> None:
        self.workers.append(len(self.cluster.scheduler.workers))
        try:
            queued = self.lab.jobs()
        except (RuntimeError, OSError):
            return
        self.jobs.update(job for job, _, _ in queued)
        self.running.append(sum(state == "RUNNING" for _, state, _ in queued))

    def fill(self, report: CallReport) -> None:
        """Put what was sampled into ``report``."""
        report.mean_workers = statistics.fmean(self.workers) if self.workers else 0.0
        report.mean_jobs = statistics.fmean(self.running) if self.running else 0.0
        report.most_jobs = max(self.running, default=0)


class LostResults(logging.Handler):
    """Counts the results the scheduler says a leaving worker took with it."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "lose already computed" in message:
            keys = message.partition("recomputed elsewhere: ")[2].rpartition(" (stimulus_id")[0]
            try:
                self.count += len(ast.literal_eval(keys))
            except (ValueError, SyntaxError, TypeError):
                self.count += 1


def glimpse_call(count: int, starts: Path, lab) -> CallReport:
    """``pool.imap`` over ``count`` items on 2 jobs of walltime 1 minute."""
    report = CallReport()
    indexes: list[int] = []
    with glimpse_pool(SHORTEST_WALLTIME) as pool:
        pool._backend.client.wait_for_workers(WORKERS, timeout=_WORKERS_TIMEOUT)
        with Sampler(pool.cluster, lab) as sampler, lost_results() as lost:
            started = time.perf_counter()
            for index, job, array in pool.imap(sleep_array, items(count, starts)):
                indexes.append(index if array[0] == index else -1)
                report.ran.add(job)
            report.wall = time.perf_counter() - started
        report.submitted = set(pool.job_ids)
    report.complete = indexes == list(range(count))
    return finish(report, count, indexes, sampler, lost, starts)


def by_hand_call(count: int, starts: Path, lab, directory: Path) -> CallReport:
    """``as_completed(client.map(...))`` over ``count`` items on 2 jobs of walltime 1 minute, each
    result released once read; ``KilledWorker`` and items missing at the end counted."""
    from distributed import Client, as_completed
    from distributed.scheduler import KilledWorker

    report = CallReport()
    indexes: list[int] = []
    bound = 4 * count * ITEM_SECONDS / WORKERS + 300
    with by_hand_cluster(SHORTEST_WALLTIME, lab.hosts.caller_address, directory) as cluster, Client(cluster) as client:
        cluster.adapt(minimum=WORKERS, maximum=WORKERS)
        client.wait_for_workers(WORKERS, timeout=_WORKERS_TIMEOUT)
        with Sampler(cluster, lab) as sampler, lost_results() as lost:
            started = time.perf_counter()
            try:
                for future in as_completed(client.map(sleep_array, items(count, starts), pure=False), timeout=bound):
                    try:
                        index, job, array = future.result()
                        indexes.append(index if array[0] == index else -1)
                        report.ran.add(job)
                    except KilledWorker:
                        report.killed += 1
                    future.release()
            except TimeoutError:
                pass
            report.wall = time.perf_counter() - started
        report.submitted = sampler.jobs
    report.complete = sorted(indexes) == list(range(count))
    return finish(report, count, indexes, sampler, lost, starts)


def finish(report: CallReport, count: int, indexes: list[int], sampler: Sampler, lost, starts: Path) -> CallReport:
    """``report`` with what the call's sampler, its log of lost results and its starts file say."""
    report.missing = len(set(range(count)) - set(indexes))
    report.lost_results = lost.count
    report.started_again = started_again(starts)
    sampler.fill(report)
    return report


@contextlib.contextmanager
def lost_results() -> Iterator[LostResults]:
    """Counts, while open, the results ``distributed.scheduler`` says a leaving worker lost."""
    handler = LostResults()
    logging.getLogger("distributed.scheduler").addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger("distributed.scheduler").removeHandler(handler)


def started_again(starts: Path) -> int:
    """How many starts in the ``starts`` file repeat an item already started."""
    if not starts.exists():
        return 0
    counts = Counter(starts.read_text().split())
    return sum(times - 1 for times in counts.values())


# -- the lab and the table -------------------------------------------------------------------------


def missing_requirement() -> str | None:
    """Why this benchmark cannot run here (``None``: it can)."""
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        return 'needs dask-jobqueue (pip install "glimpse-pools[slurm]")'
    from tests import slurm_lab

    return slurm_lab.missing_requirement()


def median_first_results(repeats: int, lab, shared: Path) -> tuple[float, float]:
    """Median seconds to the first result, glimpse then by hand, the two interleaved (each round
    starts with the other) after one untimed run of each (a lab's first jobs start slower), waiting
    for SLURM's queue to empty between runs."""
    host = lab.hosts.caller_address
    runs = [
        lambda: glimpse_first_result(4),
        lambda: by_hand_first_result(4, host, shared / "by-hand"),
    ]
    for run in runs:
        run()
        lab.wait_idle(timeout=120)
    times: list[list[float]] = [[], []]
    for round_ in range(repeats):
        for offset in range(2):
            which = (round_ + offset) % 2
            times[which].append(runs[which]())
            lab.wait_idle(timeout=120)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one run to the first result; a call of about 2 lifetimes")
    args = parser.parse_args()
    repeats, lifetimes = (1, 2) if args.quick else (3, 4)

    if str(REPOSITORY) not in sys.path:
        sys.path.insert(0, str(REPOSITORY))  # tests/slurm_lab.py
    reason = missing_requirement()
    if reason:
        print(f"bench_slurm skipped: the SLURM lab {reason}")
        return
    for name in ("distributed", "dask_jobqueue"):
        logging.getLogger(name).setLevel(logging.WARNING)

    from glimpse.pools.backends.slurm.lifetime import lifetime_within
    from glimpse.pools.backends.slurm.queue import seconds_of
    from tests.slurm_lab import start_slurm_lab

    lifetime = lifetime_within(seconds_of(SHORTEST_WALLTIME))
    count = int(lifetimes * lifetime.seconds * WORKERS / ITEM_SECONDS)
    base = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    lab = None
    try:
        lab = start_slurm_lab(base, nodes=2, cpus=2)
        os.environ["SLURM_CONF"] = str(lab.conf)
        os.environ["GLIMPSE_SLURM_DIRECTORY"] = str(lab.shared / "glimpse")
        os.environ.pop("SLURM_JOB_ID", None)
        print_table(lab, repeats, count, lifetime)
    finally:
        if lab is not None:
            lab.close()
        gc.collect()  # dask-jobqueue deletes its TLS files when its cluster is collected, not on close
        shutil.rmtree(base, ignore_errors=True)


def print_table(lab, repeats: int, count: int, lifetime) -> None:
    import dask_jobqueue
    import distributed

    shared = lab.shared
    versions = f"dask-jobqueue {dask_jobqueue.__version__}, distributed {distributed.__version__}"
    print(f"glimpse slurm pool vs dask-jobqueue by hand ({versions})")
    print(f"on a SLURM lab of 2 nodes x 2 CPUs; jobs of 1 core, 1 GB; Python {sys.version.split()[0]}")
    print(f"{'measure':<58} {'by hand':>9} {'glimpse':>9} {'ratio':>8}")
    glimpse_first, hand_first = median_first_results(repeats, lab, shared)
    label = f"MakePool to first result (median of {repeats})"
    print(f"{label:<58} {hand_first:>8.2f}s {glimpse_first:>8.2f}s {hand_first / glimpse_first:>7.2f}x")

    ideal = count * ITEM_SECONDS / WORKERS
    ours = glimpse_call(count, shared / "starts-glimpse.txt", lab)
    lab.wait_idle(timeout=120)
    theirs = by_hand_call(count, shared / "starts-by-hand.txt", lab, shared / "by-hand-call")
    lab.wait_idle(timeout=120)
    label = f"efficiency, {count} x {ITEM_SECONDS} s over {ideal / lifetime.seconds:.0f} lifetimes"
    print_efficiency(label, theirs.efficiency(count), ours.efficiency(count))
    label = "  the same per job-second SLURM ran during the call"
    print_efficiency(label, theirs.job_efficiency(count), ours.job_efficiency(count))
    print(f"(walltime {SHORTEST_WALLTIME}: a lifetime of {lifetime.seconds:.0f} s +/- {lifetime.stagger:.0f} s", end="")
    print(f"; the ideal call takes {ideal:.0f} s)")
    for name, report, check in (("glimpse", ours, "once, in order"), ("by hand", theirs, "every item present")):
        print(
            f"  {name + ':':<9} {report.wall:.1f} s; jobs submitted {len(report.submitted)}, ran items "
            f"{len(report.ran)}; running jobs {report.mean_jobs:.2f} on average, {report.most_jobs} at most; "
            f"workers {report.mean_workers:.2f} on average"
        )
        print(
            f"  {'':<9} {check}: {'yes' if report.complete else 'NO'}; started again {report.started_again}, "
            f"lost results {report.lost_results}, KilledWorker {report.killed}, missing {report.missing}"
        )
    print("(ratio = by hand / glimpse for times, glimpse / by hand for efficiency; > 1 means glimpse is better)")
    print(f"(load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


def print_efficiency(label: str, theirs: float, ours: float) -> None:
    print(f"{label:<58} {theirs:>9.2f} {ours:>9.2f} {ours / theirs if theirs else 0.0:>7.2f}x")


if __name__ == "__main__":
    main()
